"""PNG plots of a run: accuracy vs round and vs simulated time; bytes and energy per round by device class."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedsplit.ledger import Ledger  # noqa: E402


def round_axis(ax: plt.Axes) -> None:
    """Label the x axis of ``ax`` "round" and tick it at whole rounds only (never 1.25, 1.5).

    ``min_n_ticks=1``: a one-round run gets the single tick 1 (with the default 2, matplotlib
    falls back to fractional ticks when the view holds fewer than two integers).
    """
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def plot_run(ledger: Ledger, out_dir: str | Path) -> list[Path]:
    """Write the run's plots into ``out_dir`` and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounds = sorted(ledger.rounds)
    acc = [ledger.rounds[r].metrics.get("accuracy", float("nan")) for r in rounds]
    elapsed, total = [], 0.0
    for r in rounds:
        total += ledger.rounds[r].sim_s
        elapsed.append(total)
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(rounds, acc, marker="o")
    round_axis(axes[0])
    axes[0].set_ylabel("server test accuracy")
    axes[1].plot(elapsed, acc, marker="o")
    axes[1].set_xlabel("simulated time (s)")
    axes[1].set_ylabel("server test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    per_device: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for row in ledger.rows:
        cell = per_device[row.device][row.round]
        cell[0] += row.bytes_up + row.bytes_down
        cell[1] += row.energy_j
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for device, by_round in sorted(per_device.items()):
        xs = sorted(by_round)
        axes[0].plot(xs, [by_round[r][0] / 1e6 for r in xs], marker=".", label=device)
        axes[1].plot(xs, [by_round[r][1] for r in xs], marker=".", label=device)
    axes[0].set_ylabel("MB on the air per round")
    axes[1].set_ylabel("energy per round (J)")
    for ax in axes:
        round_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "bytes_energy_by_device.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
