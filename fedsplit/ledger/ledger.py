"""The per-round, per-client record of what really ran, and the round summaries derived from it.

One :class:`LedgerRow` per (round, phase, client) exchange. The simulated clock and every summary
are computed from these rows alone, so nothing is counted twice or estimated where it was measured.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

STATUSES: tuple[str, ...] = ("ok", "straggler", "failed", "offline", "rejected")


@dataclass
class LedgerRow:
    """One terminal's exchange with the server in one round.

    Attributes
    ----------
    round : int
        Server round (1-based).
    phase : str
        ``train`` or ``evaluate``.
    client_id : int
        Terminal (partition) id.
    device : str
        Device profile name.
    status : str
        ``ok``, ``straggler`` (missed the deadline; dropped), ``failed`` (error reply),
        ``offline``, or ``rejected`` (update refused before aggregation).
    reason : str
        Why the status is not ``ok`` (empty otherwise).
    flops : int
        FLOPs executed by the terminal.
    compute_s : float
        Simulated compute time, seconds.
    bytes_up, bytes_down : int
        Serialised payload bytes sent to / received from the server.
    comm_s : float
        Simulated communication time (both directions plus latencies), seconds.
    energy_j : float
        Simulated energy, joules.
    """

    round: int
    phase: str
    client_id: int
    device: str
    status: str
    reason: str
    flops: int
    compute_s: float
    bytes_up: int
    bytes_down: int
    comm_s: float
    energy_j: float

    @property
    def total_s(self) -> float:
        """Simulated seconds from the server's send to the reply's arrival."""
        return self.compute_s + self.comm_s


@dataclass
class RoundRecord:
    """Summary of one round, derived from its ledger rows.

    ``sim_s`` follows the synchronous protocol: the slowest kept client of each phase (or the
    deadline, when a straggler was cut), plus the server's aggregation time. ``wall_s`` is the real
    time the round took on this machine (seconds), for benchmarking the emulation itself.
    """

    round: int
    online: int
    selected: int
    aggregated: int
    stragglers: int
    failed: int
    rejected: int
    flops: int
    bytes_up: int
    bytes_down: int
    energy_j: float
    server_s: float
    sim_s: float
    wall_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def phase_duration(rows: Iterable[LedgerRow], deadline_s: float) -> float:
    """Simulated duration of one phase (seconds): slowest reply, capped by the deadline if set."""
    times = [r.total_s for r in rows if r.status in ("ok", "rejected", "straggler")]
    if not times:
        return 0.0
    slowest = max(times)
    if deadline_s > 0:
        return min(slowest, deadline_s)
    return slowest


class Ledger:
    """All rows of a run plus one :class:`RoundRecord` per round."""

    def __init__(self) -> None:
        self.rows: list[LedgerRow] = []
        self.rounds: dict[int, RoundRecord] = {}
        self.online: dict[int, int] = {}

    def add(self, row: LedgerRow) -> None:
        """Append a row."""
        if row.status not in STATUSES:
            raise ValueError(f"ledger status {row.status!r} not in {STATUSES}")
        self.rows.append(row)

    def mark(self, server_round: int, client_id: int, status: str, reason: str, phase: str = "train") -> bool:
        """Change the status of an existing row (e.g. an update rejected at aggregation)."""
        for row in reversed(self.rows):
            if row.round == server_round and row.client_id == client_id and row.phase == phase:
                row.status, row.reason = status, reason
                return True
        return False

    def rows_of(self, server_round: int) -> list[LedgerRow]:
        """Rows of one round."""
        return [r for r in self.rows if r.round == server_round]

    def close_round(
        self,
        server_round: int,
        deadline_s: float,
        server_s: float,
        metrics: dict[str, float] | None = None,
        wall_s: float = 0.0,
    ) -> RoundRecord:
        """Derive and store the :class:`RoundRecord` of ``server_round`` from its rows."""
        rows = self.rows_of(server_round)
        by_phase: dict[str, list[LedgerRow]] = defaultdict(list)
        for r in rows:
            by_phase[r.phase].append(r)
        sim_s = sum(phase_duration(rs, deadline_s) for rs in by_phase.values()) + server_s
        train = by_phase.get("train", [])
        record = RoundRecord(
            round=server_round,
            online=self.online.get(server_round, 0),
            selected=len(train),
            aggregated=sum(r.status == "ok" for r in train),
            stragglers=sum(r.status == "straggler" for r in train),
            failed=sum(r.status == "failed" for r in train),
            rejected=sum(r.status == "rejected" for r in train),
            flops=sum(r.flops for r in rows),
            bytes_up=sum(r.bytes_up for r in rows),
            bytes_down=sum(r.bytes_down for r in rows),
            energy_j=sum(r.energy_j for r in rows),
            server_s=server_s,
            sim_s=sim_s,
            wall_s=wall_s,
            metrics=dict(metrics or {}),
        )
        self.rounds[server_round] = record
        return record

    def write_clients_csv(self, path: str | Path) -> None:
        """Write every row to ``path`` (``clients.csv``)."""
        names = [f.name for f in fields(LedgerRow)]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=names)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(asdict(row))

    def write_rounds_csv(self, path: str | Path) -> None:
        """Write one line per round to ``path`` (``rounds.csv``), with cumulative simulated time."""
        metric_names = sorted({k for r in self.rounds.values() for k in r.metrics})
        base = [f.name for f in fields(RoundRecord) if f.name != "metrics"]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(base + ["sim_time_s"] + metric_names)
            elapsed = 0.0
            for rnd in sorted(self.rounds):
                rec = self.rounds[rnd]
                elapsed += rec.sim_s
                values = asdict(rec)
                writer.writerow([values[k] for k in base] + [elapsed] + [rec.metrics.get(m, "") for m in metric_names])
