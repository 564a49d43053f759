"""The public fault-injection kit: fake providers that fail on purpose.

- `FakeProvider`: a real HTTP/1.1 server on loopback speaking every dialect (OpenAI, Anthropic,
  Gemini, Ollama), driven by a seeded `FaultPlan`;
- `FakeTransport`: its in-memory twin, an httpx transport that works under ``autojump_clock``;
- `FaultPlan`, `Rule` and the fault types: faults as plain data;
- `check_client` / `check_stream_client`: the invariants every well-behaved client keeps;
- ``actors.testing.strategies``: Hypothesis strategies, and ``actors.testing.machine``: a
  reusable model-based state machine (`SwitchboardMachine`, `make_machine`) - both imported on
  first use, so the kit works without Hypothesis installed.
"""

import typing as _typing

from ._checker import CheckReport as CheckReport
from ._checker import InvariantViolation as InvariantViolation
from ._checker import RequestOutcome as RequestOutcome
from ._checker import Violation as Violation
from ._checker import check_client as check_client
from ._checker import check_stream_client as check_stream_client
from ._core import AttemptRecord as AttemptRecord
from ._core import ProviderCore as ProviderCore
from ._faults import FAULT_TYPES as FAULT_TYPES
from ._faults import Budget as Budget
from ._faults import ContentFiltered as ContentFiltered
from ._faults import ContextLengthExceeded as ContextLengthExceeded
from ._faults import Fault as Fault
from ._faults import FaultPlan as FaultPlan
from ._faults import Healthy as Healthy
from ._faults import Latency as Latency
from ._faults import MalformedChunk as MalformedChunk
from ._faults import MidStreamError as MidStreamError
from ._faults import MissingTerminator as MissingTerminator
from ._faults import NoResponse as NoResponse
from ._faults import PrefillRejected as PrefillRejected
from ._faults import RateLimited as RateLimited
from ._faults import ResetBeforeHeaders as ResetBeforeHeaders
from ._faults import Rule as Rule
from ._faults import ServerError as ServerError
from ._faults import SlowFirstToken as SlowFirstToken
from ._faults import Stall as Stall
from ._faults import StreamCut as StreamCut
from ._faults import Unauthorized as Unauthorized
from ._server import FakeProvider as FakeProvider
from ._server import run_fake_provider as run_fake_provider
from ._transport import FakeTransport as FakeTransport

if _typing.TYPE_CHECKING:
    from . import _machine as machine
    from . import _strategies as strategies


_LAZY_MODULES = {
    "machine": "actors.testing._machine",
    "strategies": "actors.testing._strategies",
}


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY_MODULES:
        import importlib as _importlib

        return _importlib.import_module(_LAZY_MODULES[name])
    raise AttributeError(f"module 'actors.testing' has no attribute {name!r}")


__all__ = [
    "AttemptRecord",
    "Budget",
    "CheckReport",
    "ContentFiltered",
    "ContextLengthExceeded",
    "FAULT_TYPES",
    "FakeProvider",
    "FakeTransport",
    "Fault",
    "FaultPlan",
    "Healthy",
    "InvariantViolation",
    "Latency",
    "MalformedChunk",
    "MidStreamError",
    "MissingTerminator",
    "NoResponse",
    "PrefillRejected",
    "ProviderCore",
    "RateLimited",
    "RequestOutcome",
    "ResetBeforeHeaders",
    "Rule",
    "ServerError",
    "SlowFirstToken",
    "Stall",
    "StreamCut",
    "Unauthorized",
    "Violation",
    "check_client",
    "check_stream_client",
    "machine",
    "run_fake_provider",
    "strategies",
]
