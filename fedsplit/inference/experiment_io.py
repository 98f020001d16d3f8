"""Small output helpers shared by the scheduler experiments (``experiments/deng_*.py``, benches).

Every experiment prints one ``key=value ...`` line per table row, writes the table as CSV next to
its PNG, and prints ``check <claim>: PASS|FAIL (numbers)`` lines for the claims it verifies; a failed
check is exit status 1, once everything is written. In a smoke run (``Checks(smoke=True)``) a claim
that only the full-size run can show prints ``check <claim>: SKIP (smoke: <why>)`` and does not count.
"""

from __future__ import annotations

import csv
from pathlib import Path


def format_value(value: object) -> str:
    """Compact text of a table cell (floats to 6 significant digits)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def print_row(row: dict) -> None:
    """Print one table row as ``key=value`` pairs."""
    print(" ".join(f"{k}={format_value(v)}" for k, v in row.items()), flush=True)


def write_csv(rows: list[dict], path: Path) -> None:
    """Write rows (dicts with the same keys) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: format_value(v) for k, v in row.items()})


class Checks:
    """Collects ``check <claim>: PASS|FAIL (detail)`` lines.

    ``smoke``: the run is a smoke run, too small to show the claims checked with ``full_size``.
    """

    def __init__(self, smoke: bool = False) -> None:
        self.smoke = smoke
        self.results: list[tuple[str, bool, str]] = []
        self.skipped: list[tuple[str, str]] = []

    def check(self, claim: str, passed: bool, detail: str, *, full_size: str | None = None) -> bool:
        """Record and print one check. ``full_size`` says why a smoke run is too small to show the
        claim: in a smoke run such a check prints ``SKIP (smoke: <full_size>)`` and does not count."""
        if self.smoke and full_size:
            self.skipped.append((claim, full_size))
            print(f"check {claim}: SKIP (smoke: {full_size})", flush=True)
            return True
        self.results.append((claim, bool(passed), detail))
        print(f"check {claim}: {'PASS' if passed else 'FAIL'} ({detail})", flush=True)
        return bool(passed)

    @property
    def all_passed(self) -> bool:
        """Whether every recorded check passed."""
        return all(ok for _, ok, _ in self.results)


def plt():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
