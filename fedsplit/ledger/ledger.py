"""The per-round, per-client record of what really ran, and the round summaries derived from it.

One :class:`LedgerRow` per message exchange (a server message and its terminal's reply): a FedAvg
round has one per sampled terminal and phase, a split-learning round one per batch. Where each
exchange sits on the simulated clock (``start_s``/``end_s``) is decided by
:class:`fedsplit.devices.RoundClock`; every round summary is computed from the rows plus the
server's own work, so nothing is counted twice or estimated where it was measured.
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
    """One exchange of a terminal with the server.

    Attributes
    ----------
    round : int
        Server round (1-based).
    phase : str
        The message category: ``train``, ``evaluate`` or ``query``.
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
    message_type : str
        The full Flower message type, e.g. ``train`` or ``train.split-step``.
    seq : int
        Position of the exchange in the terminal's chain within the round (0 = first).
    start_s, end_s : float
        Simulated seconds since the round began at which the server sent the message and the
        reply arrived.
    flops_method : str
        How ``flops`` was obtained: ``reported`` (by the ClientApp, exact counts),
        ``counted`` (counted by the engine with FlopCounterMode), ``timed`` (measured seconds
        times the host's calibrated FLOP/s, for operations the counter does not know), or
        ``none`` (no compute measured: a failed exchange).
    gpu_mem_bytes : int
        Peak CUDA memory the terminal allocated for this exchange, bytes (the reply's
        ``"gpu-mem-bytes"`` metric; 0 off CUDA or when not reported).
    dp_epsilon : float
        The terminal's cumulative epsilon of local DP-SGD after this exchange, at ``privacy.delta``
        (the reply's ``"dp-epsilon"`` metric: every noisy step it took in the run so far; 0 without
        local DP).
    attempt : int
        Attempt of the round the exchange belongs to: 0, or ``k`` in the ``k``-th retry of a
        round that kept fewer updates than ``faults.min_clients`` (the earlier attempts' rows
        stay, their updates marked ``rejected``).
    measured_compute_s : float
        Real seconds the terminal took to handle the message, as it measured them (a deployed
        node with ``profile = "measure"``: the reply's ``fedsplit.measured`` record); 0 when not
        measured. Next to ``compute_s``, the modelled seconds.
    measured_comm_s : float
        Real seconds of the exchange apart from the terminal's compute: the round trip the
        server timed (send to reply received) minus ``measured_compute_s``, so transfers both
        ways, queueing and the deployment engine's per-message overhead; 0 when not measured
        (simulations, nodes that do not measure). Next to ``comm_s``, the modelled seconds.
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
    message_type: str = ""
    seq: int = 0
    start_s: float = 0.0
    end_s: float = 0.0
    flops_method: str = "none"
    gpu_mem_bytes: int = 0
    dp_epsilon: float = 0.0
    attempt: int = 0
    measured_compute_s: float = 0.0
    measured_comm_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Simulated seconds from the server's send to the reply's arrival."""
        return self.compute_s + self.comm_s


@dataclass
class RoundRecord:
    """Summary of one round, derived from its ledger rows.

    ``sim_s`` is the round's simulated duration in seconds from :class:`~fedsplit.devices.RoundClock`
    (FedAvg: the slowest kept terminal of each phase, or the deadline when a straggler was cut,
    plus the server's aggregation). ``server_s``, ``server_flops`` and ``server_energy_j`` are the
    edge server's own work in the round (seconds, FLOPs, joules on the ``edge-server`` profile).
    Terminal counts (``selected`` ... ``rejected``) count terminals with ``train`` exchanges in the
    round, a terminal's status being that of its first exchange that was not ``ok``, in the round's
    last attempt. ``offline`` is the number of terminals of the population not online in the round;
    ``retries`` the attempts discarded before the kept one (``faults.too_few = "retry"``); the
    FLOPs, bytes, joules and ``sim_s`` include every attempt. ``wall_s`` is the real time the round
    took on this machine (seconds), for benchmarking the emulation itself.
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
    server_flops: int = 0
    server_energy_j: float = 0.0
    exchanges: int = 0
    offline: int = 0
    retries: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when terminals were asked to train but no update was aggregated."""
        return self.selected > 0 and self.aggregated == 0


def terminal_statuses(rows: Iterable[LedgerRow]) -> dict[int, str]:
    """Each terminal's status over its exchanges: the first that was not ``ok``, else ``ok``."""
    status: dict[int, str] = {}
    for r in rows:
        if status.get(r.client_id, "ok") == "ok":
            status[r.client_id] = r.status
    return status


class Ledger:
    """All rows of a run plus one :class:`RoundRecord` per round."""

    def __init__(self) -> None:
        self.rows: list[LedgerRow] = []
        self.rounds: dict[int, RoundRecord] = {}
        self.online: dict[int, int] = {}
        self._seq: dict[tuple[int, int], int] = {}
        self._by_round: dict[int, list[LedgerRow]] = defaultdict(list)  # the same rows, per round

    def add(self, row: LedgerRow) -> None:
        """Append a row."""
        if row.status not in STATUSES:
            raise ValueError(f"ledger status {row.status!r} not in {STATUSES}")
        self.rows.append(row)
        self._by_round[row.round].append(row)

    def mark(self, server_round: int, client_id: int, status: str, reason: str, phase: str = "train") -> bool:
        """Change the status of the terminal's last row of ``phase`` in the round (e.g. an update
        rejected at aggregation). Returns False when there is no such row."""
        for row in reversed(self._by_round.get(server_round, [])):
            if row.client_id == client_id and row.phase == phase:
                row.status, row.reason = status, reason
                return True
        return False

    def rows_of(self, server_round: int) -> list[LedgerRow]:
        """Rows of one round (a copy of the list, in the order they were added)."""
        return list(self._by_round.get(server_round, []))

    def next_seq(self, server_round: int, client_id: int) -> int:
        """Sequence number of the next exchange of ``client_id`` in ``server_round``."""
        key = (server_round, client_id)
        seq = self._seq.get(key, 0)
        self._seq[key] = seq + 1
        return seq

    def close_round(
        self,
        server_round: int,
        *,
        sim_s: float,
        server_s: float = 0.0,
        server_flops: int = 0,
        server_energy_j: float = 0.0,
        metrics: dict[str, float] | None = None,
        wall_s: float = 0.0,
        offline: int = 0,
    ) -> RoundRecord:
        """Derive and store the :class:`RoundRecord` of ``server_round`` from its rows.

        Parameters
        ----------
        server_round : int
            The round to close.
        sim_s : float
            The round's simulated duration, seconds (:attr:`fedsplit.devices.RoundClock.elapsed_s`).
        server_s, server_flops, server_energy_j : float, int, float
            The edge server's work in the round: seconds, FLOPs, joules.
        metrics : dict, optional
            Metrics of the round (e.g. the server-side evaluation).
        wall_s : float
            Real seconds the round took on this machine.
        offline : int
            Terminals of the population offline in the round.
        """
        rows = self.rows_of(server_round)
        last = max((r.attempt for r in rows), default=0)
        train = terminal_statuses(r for r in rows if r.phase == "train" and r.attempt == last)
        statuses = list(train.values())
        record = RoundRecord(
            round=server_round,
            online=self.online.get(server_round, 0),
            selected=len(statuses),
            aggregated=statuses.count("ok"),
            stragglers=statuses.count("straggler"),
            failed=statuses.count("failed"),
            rejected=statuses.count("rejected"),
            flops=sum(r.flops for r in rows),
            bytes_up=sum(r.bytes_up for r in rows),
            bytes_down=sum(r.bytes_down for r in rows),
            energy_j=sum(r.energy_j for r in rows),
            server_s=server_s,
            sim_s=sim_s,
            wall_s=wall_s,
            server_flops=int(server_flops),
            server_energy_j=server_energy_j,
            exchanges=len(rows),
            offline=offline,
            retries=last,
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
