"""Benchmark: how long Edgent's plan for one (latency requirement, bandwidth) takes, default model.

The online switch re-plans on every bandwidth-state change, so a plan must be cheap: the acceptance
bound is 10 ms. The configuration table (per-layer predictions, computed once per model and device
pair) is built first; then ``plan`` is timed over a grid of requirements and bandwidths.

Run:  python experiments/bench_edgent.py
Prints ``key=value`` lines and ``check plan < 10 ms: PASS|FAIL``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fedsplit.inference.edgent.configs import build_config_table
from fedsplit.inference.edgent.devices import DEFAULT_DEVICE, DEFAULT_EDGE, get_profile
from fedsplit.inference.edgent.latency import profile_and_fit
from fedsplit.inference.edgent.optimizer import plan
from fedsplit.inference.experiment_io import Checks, print_row
from fedsplit.models.multiexit import build_multiexit


def main() -> int:
    start = time.perf_counter()
    latency, _ = profile_and_fit(count_per_kind=8, seed=0, trials=7)
    profile_s = time.perf_counter() - start
    model = build_multiexit("multiexit-cnn", (1, 32, 32), 10, width=0.5, seed=0)
    start = time.perf_counter()
    table = build_config_table(model, latency, get_profile(DEFAULT_DEVICE), get_profile(DEFAULT_EDGE),
                               [0.8, 0.88, 0.93, 0.95])
    table_s = time.perf_counter() - start
    durations = []
    for requirement in np.linspace(0.005, 0.3, 20):
        for bandwidth in np.geomspace(0.05e6, 50e6, 25):
            t0 = time.perf_counter()
            plan(table, float(requirement), float(bandwidth))
            durations.append(time.perf_counter() - t0)
    d = np.array(durations)
    print_row({"configs": len(table), "plans": len(d), "profile_s": profile_s, "table_s": table_s,
               "plan_median_us": float(np.median(d) * 1e6), "plan_p99_us": float(np.quantile(d, 0.99) * 1e6),
               "plan_max_us": float(d.max() * 1e6)})
    checks = Checks()
    checks.check("plan < 10 ms", float(np.quantile(d, 0.99)) < 0.010,
                 f"p99 {np.quantile(d, 0.99) * 1e3:.3f} ms, max {d.max() * 1e3:.3f} ms over {len(d)} plans")
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
