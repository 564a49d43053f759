"""Import cost of `supervisors` (the runtime) against its unavoidable base (trio + httpx +
msgspec), each in fresh interpreters: best of N wall times and peak RSS.

Budgets: `import supervisors` at most 30 ms more than its base (issue 11), and in all
≤ 0.3 s and ≤ 40 MB (DESIGN.md) on the 2-core machines.

Bytecode: an installed package imports from its ``.pyc`` caches (pip writes them), but a
source checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (as some sandboxes and CI images set)
compiles every module on every start - 100+ ms that no user pays. So both sides are measured
with bytecode caches: in a private ``PYTHONPYCACHEPREFIX`` (written by one warm-up run,
leaving the source tree alone). ``--no-bytecode`` measures the compile-every-time case.
The added time is measured in one interpreter (base imported first, then `supervisors`):
the difference of two separate totals is noisier than the budget.
Last line: a JSON object of the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

PROBE = (
    "import time, resource; t = time.perf_counter(); import {mod}; "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)
# What switchboard adds, measured in one interpreter: the base first, then our import alone
# (two separate totals differ by more than their noise on a busy machine).
ADDED_PROBE = (
    "import time; import trio, httpx, msgspec; t = time.perf_counter(); import supervisors; "
    "print(time.perf_counter() - t)"
)
ADDED_BUDGET_S = 0.030


def measure(mod: str, runs: int, env: dict[str, str]) -> tuple[float, float]:
    best_time, best_rss = float("inf"), float("inf")
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(mod=mod)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.split()
        best_time = min(best_time, float(out[0]))
        best_rss = min(best_rss, int(out[1]) / 1024)
    return best_time, best_rss


def main() -> None:
    runs = 3 if "--quick" in sys.argv else 7
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="switchboard-pyc-") as cache:
        if "--no-bytecode" in sys.argv:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env.pop("PYTHONPYCACHEPREFIX", None)
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = cache
            measure("trio, httpx, msgspec, supervisors", 1, env)  # writes the caches
        base_t, base_m = measure("trio, httpx, msgspec", runs, env)
        ours_t, ours_m = measure("supervisors", runs, env)
        added = min(
            float(
                subprocess.run(
                    [sys.executable, "-c", ADDED_PROBE],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                ).stdout
            )
            for _ in range(runs)
        )
    print(f"{'import':<24}{'seconds':>10}{'peak MB':>10}")
    print(f"{'trio + httpx + msgspec':<24}{base_t:>10.3f}{base_m:>10.1f}")
    print(f"{'supervisors':<24}{ours_t:>10.3f}{ours_m:>10.1f}")
    print(
        f"added by switchboard: {added * 1000:.0f} ms (budget {ADDED_BUDGET_S * 1000:.0f} ms), "
        f"{ours_m - base_m:.1f} MB"
    )
    print(
        json.dumps(
            {
                "import_s": round(ours_t, 4),
                "import_mb": round(ours_m, 1),
                "base_import_s": round(base_t, 4),
                "base_import_mb": round(base_m, 1),
                "added_s": round(added, 4),
                "bytecode": "--no-bytecode" not in sys.argv,
                "within_budget": added <= ADDED_BUDGET_S and ours_t <= 0.3 and ours_m <= 40,
            }
        )
    )


if __name__ == "__main__":
    main()
