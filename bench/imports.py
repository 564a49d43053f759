"""Import cost of `supervisors` (the runtime) against its unavoidable base (trio + httpx +
msgspec), each in fresh interpreters: best of N wall times and peak RSS.

DESIGN.md's budget: `import supervisors` ≤ 0.3 s and ≤ 40 MB on the 2-core machines.
Last line: a JSON object of the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = (
    "import time, resource; t = time.perf_counter(); import {mod}; "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def measure(mod: str, runs: int) -> tuple[float, float]:
    best_time, best_rss = float("inf"), float("inf")
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(mod=mod)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        best_time = min(best_time, float(out[0]))
        best_rss = min(best_rss, int(out[1]) / 1024)
    return best_time, best_rss


def main() -> None:
    runs = 3 if "--quick" in sys.argv else 7
    base_t, base_m = measure("trio, httpx, msgspec", runs)
    ours_t, ours_m = measure("supervisors", runs)
    print(f"{'import':<24}{'seconds':>10}{'peak MB':>10}")
    print(f"{'trio + httpx + msgspec':<24}{base_t:>10.3f}{base_m:>10.1f}")
    print(f"{'supervisors':<24}{ours_t:>10.3f}{ours_m:>10.1f}")
    print(f"added by switchboard: {ours_t - base_t:.3f} s, {ours_m - base_m:.1f} MB")
    print(
        json.dumps(
            {
                "import_s": round(ours_t, 4),
                "import_mb": round(ours_m, 1),
                "base_import_s": round(base_t, 4),
                "base_import_mb": round(base_m, 1),
                "within_budget": ours_t <= 0.3 and ours_m <= 40,
            }
        )
    )


if __name__ == "__main__":
    main()
