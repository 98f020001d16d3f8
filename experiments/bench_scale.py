"""Benchmark: a population of 100,000 emulated terminals, 100 sampled per round.

Runs the same per-round work (100 sampled terminals, synthetic data generated per terminal on
demand, same model and local epochs) with a population of 100 and of 100,000 terminals on
fedsplit's engine, and reports the per-round wall time of each and the peak resident memory of
the whole run (driver plus every Ray worker process), sampled every 50 ms.

Run::

    python experiments/bench_scale.py              # 100 vs 100,000 terminals
    python experiments/bench_scale.py --smoke      # 100 vs 2,000 terminals, 3 rounds

Prints ``population=<n> rounds=<r> round_s=<mean wall s per round, first round excluded> peak_rss_gb=<GB>`` per size, then
``check ...`` lines for the acceptance bars (RSS < 4 GB; per-round time at the large size within 10 %
of the small size); exit status 1 when one fails. Under ``--smoke`` the per-round time bar is ``SKIP``
(two timed rounds are within its 10 % of noise); the memory bar, at 2,000 terminals, still counts.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time

import psutil

from fedsplit.cli_types import whole_number


class PeakRss:
    """Peak resident memory (bytes) of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        me = psutil.Process(os.getpid())
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_population(size: int, sampled: int, rounds: int) -> tuple[float, float]:
    """Mean wall seconds per round and peak RSS (GB) for one population size."""
    import ray

    from fedsplit.config import load_config
    from fedsplit.simulation.runner import simulate

    overrides = [
        "data.name=synthetic",
        "data.samples_per_client=32",
        "data.resolution=8",
        "model.name=mlp",
        "train.local_epochs=2",
        f"rounds={rounds}",
        f"devices={{pi={size}}}",
        "profiles.pi={base='raspberry-pi-4', availability=1.0}",
        f"strategy.fraction_train={sampled / size}",
        f"strategy.min_train_nodes={sampled}",
        "progress=false",
        "out_dir=/tmp/fedsplit-bench-scale",
    ]
    cfg = load_config(None, overrides)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    try:
        with PeakRss() as rss:
            outcome = simulate(cfg, write=False)
        selected = {r.selected for r in outcome.session.ledger.rounds.values()}
        assert selected == {sampled}, f"sampled {selected} terminals per round, wanted {sampled}"
        # The first round includes the actors' one-off start-up (imports, data, FLOP counts).
        walls = [outcome.session.ledger.rounds[r].wall_s for r in sorted(outcome.session.ledger.rounds)][1:]
        round_s = sum(walls) / len(walls)
    finally:
        ray.shutdown()
    return round_s, rss.peak / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=whole_number(2, None, "a whole number, at least 2"), default=None,
                        help="rounds per population, at least 2 (the first is not timed; default 5, --smoke 3)")
    args = parser.parse_args(argv)
    small, large = (100, 2_000) if args.smoke else (100, 100_000)
    rounds = args.rounds if args.rounds is not None else (3 if args.smoke else 5)
    results = {}
    for size in (small, large):
        round_s, peak = run_population(size, 100, rounds)
        results[size] = (round_s, peak)
        print(f"population={size} rounds={rounds} round_s={round_s:.3f} peak_rss_gb={peak:.2f}", flush=True)
    from fedsplit.inference.experiment_io import Checks

    ratio = results[large][0] / results[small][0]
    checks = Checks(smoke=args.smoke)
    checks.check("peak_rss_below_4gb", results[large][1] < 4.0, f"{results[large][1]:.2f} GB")
    checks.check("round_time_ratio_within_10pct", ratio <= 1.10, f"ratio={ratio:.3f}",
                 full_size=f"{rounds - 1} timed round(s) of {large:,} terminals: noise beyond the 10 % bar")
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
