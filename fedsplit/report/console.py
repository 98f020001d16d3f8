"""Terminal output with ``rich``: a progress bar per round and a closing summary table."""

from __future__ import annotations

from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedsplit.ledger import RoundRecord


#: Width of a table console off a terminal: wider than any table, so none is cut or wrapped.
UNBOUNDED_WIDTH = 10_000


def table_console(width: int | None = None, file: IO[str] | None = None) -> Console:
    """A :class:`~rich.console.Console` to print tables on (default: on stdout).

    On a terminal it takes the terminal's width. Anywhere else (a pipe, a file, CI) rich would
    assume 80 columns and cut every wider table with ``…``; there the width is unbounded, so each
    table prints in full, as wide as its content (``COLUMNS`` is not consulted).

    Parameters
    ----------
    width : int, optional
        Columns to render at, terminal or not (None or 0: as above).
    file : file-like, optional
        Where to print (default: ``sys.stdout`` at print time).
    """
    console = Console(file=file, width=width or None)
    if not width and not console.is_terminal:
        console.width = UNBOUNDED_WIDTH
    return console


class RoundProgress:
    """Per-round progress of a run on stderr (silent when ``enabled`` is False).

    On a terminal a ``rich`` progress bar advances once per finished round. Anywhere else (a
    pipe, a file, CI) there is no bar, whose redraws and truncated tail would garble a log:
    each finished round prints one plain, unwrapped line ``round k/N: <status>``.

    Parameters
    ----------
    total_rounds : int
        The ``N`` of ``round k/N``.
    enabled : bool
        Print anything at all.
    console : rich.console.Console, optional
        Where to print (default: a console on stderr); its ``is_terminal`` chooses bar or lines.
    done_rounds : int
        Rounds already finished when the bar starts (a resumed run's), so it shows ``k/N`` from there.
    """

    def __init__(self, total_rounds: int, enabled: bool = True, console: Console | None = None, done_rounds: int = 0) -> None:
        self.enabled = enabled
        self.total_rounds = total_rounds
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.live,
        )
        self._task = self._progress.add_task("rounds", total=total_rounds, completed=done_rounds, status="")

    def __enter__(self) -> "RoundProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def on_round(self, record: RoundRecord, sim_elapsed_s: float) -> None:
        """Report a finished round: its accuracy, simulated time (s), uplink bytes and energy (J).

        A round that aggregated nothing says so first: ``nothing aggregated (...)`` with what
        became of its terminals' updates.
        """
        acc = record.metrics.get("accuracy")  # absent in a round the server did not evaluate (eval_every)
        status = (
            f"acc={'-' if acc is None else format(acc, '.4f')} sim={record.sim_s:.2f}s (total {sim_elapsed_s:.1f}s) "
            f"up={record.bytes_up / 1e6:.2f}MB E={record.energy_j:.2f}J "
            f"agg={record.aggregated}/{record.selected}"
        )
        if record.empty:
            status = f"nothing aggregated ({empty_round_reason(record)}) {status}"
        if self.live:
            self._progress.update(self._task, advance=1, status=status)
        elif self.enabled:
            self.console.file.write(f"round {record.round}/{self.total_rounds}: {status}\n")
            self.console.file.flush()


def empty_round_reason(record: RoundRecord) -> str:
    """What became of the updates of a round that aggregated none, e.g. ``10 selected: 10 rejected``."""
    counts = {"failed": record.failed, "rejected": record.rejected, "stragglers": record.stragglers}
    parts = [f"{n} {name}" for name, n in counts.items() if n]
    return f"{record.selected} selected: {', '.join(parts) or 'none kept'}"


def print_summary(summary: dict[str, Any], run_dir: str, console: Console | None = None) -> None:
    """Print the closing tables of a run: its totals, then its train exchanges per device class
    (the means per exchange that ``summary.json`` holds as ``mean_*``, and the class's total energy)."""
    console = console or table_console()
    table = Table(title=f"fedsplit run: {run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary["final_metrics"].items():
        table.add_row(f"final {key}", f"{value:.4f}")
    table.add_row("rounds", str(summary["rounds"]))
    if "split_cut" in summary:  # split learning: the cut trained with (what split.cut = auto chose)
        cut = summary["split_cut"]
        table.add_row("split cut", cut if isinstance(cut, str) else "; ".join(f"{k}: {v}" for k, v in cut.items()))
    table.add_row("simulated time (s)", f"{summary['sim_time_s']:.2f}")
    table.add_row("mean simulated round (s)", f"{summary['mean_round_sim_s']:.3f}")
    table.add_row("wall time (s)", f"{summary['wall_time_s']:.2f}")
    table.add_row("mean wall round (s)", f"{summary['mean_round_wall_s']:.3f}")
    if "first_round_wall_s" in summary:  # the first round also starts the engine
        table.add_row("first wall round, with start-up (s)", f"{summary['first_round_wall_s']:.3f}")
        table.add_row("mean wall round after the first (s)", f"{summary['mean_round_wall_after_first_s']:.3f}")
    table.add_row("bytes up / down (MB)", f"{summary['bytes_up'] / 1e6:.2f} / {summary['bytes_down'] / 1e6:.2f}")
    if "compression_ratio" in summary:
        table.add_row("uplink compression ratio vs fp32", f"{summary['compression_ratio']:.1f}")
    table.add_row("energy (J)", f"{summary['energy_j']:.2f}")
    table.add_row("stragglers / failed / rejected", f"{summary['stragglers']} / {summary['failed']} / {summary['rejected']}")
    if "stopped" in summary:
        stopped = summary["stopped"]
        table.add_row("stopped", f"after round {stopped['after_round']} of {stopped['of_rounds']}: {stopped['reason']}")
    console.print(table)
    devices = Table(title="per device class (train exchanges)", caption="mean = per train exchange; total = over all the class's train exchanges")
    for col in ("device", "exchanges", "mean compute s", "mean comm s", "mean energy J", "total energy J", "stragglers"):
        devices.add_column(col, justify="right")
    for name, d in summary["devices"].items():
        devices.add_row(
            name,
            str(d["exchanges"]),
            f"{d['mean_compute_s']:.4f}",
            f"{d['mean_comm_s']:.4f}",
            f"{d['mean_energy_j']:.4f}",
            f"{d['mean_energy_j'] * d['exchanges']:.4f}",
            str(d["stragglers"]),
        )
    console.print(devices)
