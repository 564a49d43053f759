"""Seeded, deterministic "model output" for the fake providers.

Problem: a fake provider must answer like a model, but tests need to predict the answer: the
same request sent twice (a retry, a failover to a twin connection) must get the same text, and
token counts must be exact so usage accounting can be asserted to the token.

Options: canned strings (predictable but every request looks alike, so a test cannot tell two
answers apart), a real tokenizer (heavy, and tests would need it too to compute counts), or
words from a small vocabulary drawn by a PRNG seeded from the request. We take the last: one
*token* is one word, so counting is ``len(text.split())``, and the seed is derived from the
plan's seed, the model and the request's text, so equal requests get equal answers while
different prompts or models get different ones.

The counting rules (public: tests compute expected usage with them):

- **input tokens** = the number of whitespace-separated words across every text the request
  carries: system text and each message's text (string content, text parts/blocks, tool
  result contents). Tool schemas, images and tool-call arguments are not counted.
- **output tokens** = the number of words emitted (streamed: one word per chunk); a tool call
  counts one token for the tool's name plus one per argument.

``random.Random`` seeded with a ``str`` hashes it with SHA-512, so the draws do not depend on
``PYTHONHASHSEED`` and are the same on every run and machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

VOCABULARY: tuple[str, ...] = (
    "amber", "breeze", "cobalt", "delta", "ember", "fable", "granite", "harbor",
    "island", "jasper", "kindle", "lumen", "meadow", "nectar", "orbit", "pebble",
    "quartz", "ripple", "saffron", "timber", "umber", "velvet", "willow", "xenon",
    "yonder", "zephyr", "acorn", "beacon", "cedar", "dune", "echo", "fjord",
    "glade", "haven", "ivory", "juniper", "kelp", "lagoon", "maple", "nova",
    "opal", "prairie", "quill", "river", "summit", "tundra", "upland", "vista",
    "wren", "yarrow", "zenith", "aurora", "basalt", "canyon", "drift", "estuary",
    "fern", "grove", "heron", "inlet", "jade", "knoll", "lark", "mesa",
)  # fmt: skip


def count_words(texts: Iterable[str]) -> int:
    """Input tokens of a request: whitespace-separated words across all *texts*."""
    return sum(len(text.split()) for text in texts)


def rng_for(*parts: object) -> random.Random:
    """A PRNG whose draws depend only on *parts* (stable across runs and processes)."""
    return random.Random("\x1f".join(str(p) for p in parts))


def answer_tokens(seed: int, model: str, prompt_key: str, count: int) -> list[str]:
    """The *count* tokens of the full answer to a prompt: words joined by single spaces, the
    first capitalised, the last ending with a period. Token ``i > 0`` starts with its space,
    so ``"".join(tokens)`` is the text and ``len(tokens) == len(text.split())``."""
    rng = rng_for("answer", seed, model, prompt_key)
    words = [rng.choice(VOCABULARY) for _ in range(count)]
    if not words:
        return []
    words[0] = words[0].capitalize()
    words[-1] += "."
    return [words[0]] + [" " + w for w in words[1:]]


def tool_arguments(
    seed: int, model: str, prompt_key: str, params: Sequence[tuple[str, str]]
) -> dict[str, object]:
    """Deterministic arguments for a tool call: one value per declared parameter, typed by
    its JSON Schema ``type`` (``string`` → a word, ``integer`` → 1..100, ``number`` → a
    float, ``boolean`` → a bool, anything else → a word)."""
    rng = rng_for("tool", seed, model, prompt_key)
    args: dict[str, object] = {}
    for name, kind in params:
        if kind == "integer":
            args[name] = rng.randint(1, 100)
        elif kind == "number":
            args[name] = round(rng.uniform(0, 100), 2)
        elif kind == "boolean":
            args[name] = rng.random() < 0.5
        else:
            args[name] = rng.choice(VOCABULARY)
    return args


def embedding(seed: int, model: str, text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector of *dimensions* floats (rounded to 6 decimals) for *text*."""
    rng = rng_for("embed", seed, model, text)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def hex_id(seed: int, *parts: object, length: int = 24) -> str:
    """A deterministic hexadecimal id (response ids, request ids, tool call ids)."""
    rng = rng_for("id", seed, *parts)
    return "".join(rng.choice("0123456789abcdef") for _ in range(length))


def alnum_id(seed: int, *parts: object, length: int = 24) -> str:
    """A deterministic alphanumeric id, shaped like the providers' ``chatcmpl-…`` ids."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    rng = rng_for("id", seed, *parts)
    return "".join(rng.choice(alphabet) for _ in range(length))
