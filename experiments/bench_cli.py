"""Benchmark: how long the ``fedsplit`` command takes to answer before any work starts.

A user's first contact with the front door is ``fedsplit --help``, a sub-command's ``--help``
and, often, a mistyped configuration. None of them needs torch, Ray, Flower or matplotlib, which
take seconds to import on a small machine; this bench times each in a fresh interpreter (best
and median of ``--runs``), beside ``python -c "import torch"`` and a bare ``python -c pass`` run
the same way, so the ratio says how close the command is to the interpreter's own start-up.

Run::

    python experiments/bench_cli.py            # 5 runs of each (~30 s on 2 cores)
    python experiments/bench_cli.py --runs 9

It prints one line per command::

    command=<args> best_s=.. median_s=.. over_python=.. over_import_torch=..
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "fedsplit --help": [sys.executable, "-m", "fedsplit.cli", "--help"],
    "fedsplit simulate --help": [sys.executable, "-m", "fedsplit.cli", "simulate", "--help"],
    "fedsplit schedule --help": [sys.executable, "-m", "fedsplit.cli", "schedule", "--help"],
    "fedsplit simulate --set bogus=1": [sys.executable, "-m", "fedsplit.cli", "simulate", "--set", "bogus=1"],
}
#: Exit status each command must give (a bench of a command that fails differently times nothing useful).
EXPECTED_CODE = {"fedsplit simulate --set bogus=1": 2}


def time_command(argv: list[str], runs: int, expected: int) -> list[float]:
    """Wall seconds of ``runs`` runs of ``argv`` in fresh processes (output discarded)."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        seconds.append(time.perf_counter() - started)
        if code != expected:
            raise SystemExit(f"{' '.join(argv)} exited {code}, expected {expected}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command, >= 1 (best and median reported)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"argument --runs: {args.runs} is not a positive count")
    for name, cmd in COMMANDS.items():  # warm-up: the file caches
        time_command(cmd, 1, EXPECTED_CODE.get(name, 0))
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # interleaved: a slow moment of the machine hits every command alike
        for name, cmd in COMMANDS.items():
            times[name] += time_command(cmd, 1, EXPECTED_CODE.get(name, 0))
    python_s, torch_s = min(times["python -c pass"]), min(times["python -c 'import torch'"])
    for name, seconds in times.items():
        best = min(seconds)
        print(f"command={name!r} best_s={best:.3f} median_s={statistics.median(seconds):.3f} "
              f"over_python={best / python_s:.1f} over_import_torch={best / torch_s:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
