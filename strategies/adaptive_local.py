"""Adaptive local work: per-terminal local epochs, FedNova averaging, and a budget controller.

:class:`AdaptiveLocalStrategy` wraps a Flower strategy (possibly :class:`FedCSStrategy`):

1. **Equal finish times.** Of the terminals the inner strategy configured, the round's *target*
   time ``T`` is the predicted exchange time of the slowest one doing ``base`` epochs (``base`` =
   ``train.local_epochs``, or the controller's choice), at most the round deadline
   (``clock.round_deadline_s``, e.g. FedCS's) when the slowest's one epoch fits it. Every terminal then gets
   ``e_i = clamp(floor((T - comm_i) / epoch_i), 1, max_epochs)`` epochs, where ``comm_i`` and
   ``epoch_i`` are its predicted communication time and per-epoch compute time (seconds,
   :class:`~fedsplit.strategies.fedcs.CompletionPredictor`): fast terminals do more work in the
   time the slowest needs anyway.
2. **FedNova averaging** (Wang et al. 2020, "Tackling the objective inconsistency problem"):
   terminal ``i`` took ``tau_i = e_i * ceil(n_i / b)`` SGD steps; its normalised update is
   ``d_i = (w - w_i) / tau_i``; the new model is ``w - tau_eff * sum_i p_i d_i`` with
   ``p_i = n_i / sum n`` and ``tau_eff = sum_i p_i tau_i``. Plain averaging of heterogeneous
   steps would drift toward the terminals that stepped most. (Local SGD momentum scales every
   ``d_i`` by about the same ``1 / (1 - momentum)``, so it is not corrected for.)
3. **Budget controller** (Wang et al. 2019, "Adaptive federated learning in resource constrained
   edge computing systems", their Algorithm 2 in epochs): with a total budget ``R`` of one resource,
   simulated **time** (seconds) or **energy** (joules, terminals + edge server), it chooses the
   round's base epochs ``tau`` maximising ``G(tau) = tau / cost(tau) * (eta (1 - beta eta / 2) -
   rho h(tau) / (tau eps^2))`` among the ``tau`` the remaining budget pays for, with ``h(tau) =
   delta / beta ((eta beta + 1)^tau - 1) - eta delta tau``. ``cost(tau)`` is the round's predicted
   cost at base ``tau`` (time: the slowest terminal's exchange, every terminal's epochs set by
   rule 1; energy: the sum over the round's terminals of their uplink and training joules), plus
   the last round's measured cost beyond its prediction (aggregation, client-side evaluation: Wang
   et al. measure ``c`` and ``b`` as they go). ``beta`` (smoothness), ``delta`` (gradient
   divergence) and ``rho`` (Lipschitz constant of the loss) are estimated each round from the
   terminals' pseudo-gradients ``(w - w_i) / (eta tau_i)`` and their losses. ``eps^2`` is set
   once, from the first estimates, so that the divergence penalty at ``max_tau`` is half the
   progress term: the penalty per epoch grows with ``tau``, so expensive aggregations (large fixed
   cost) favour more local epochs and cheap ones fewer. (Balancing it at ``tau = 2`` instead, as
   an earlier version did, makes ``tau = 1`` win for every cost, since ``h(1) = 0``.) What was
   spent is measured, not predicted: the metered grid's running totals
   (:meth:`~fedsplit.simulation.metered_grid.MeteredGrid.resources_used`). **The run ends** after
   the first round past which the remaining budget cannot pay for another round of one epoch
   (predicted from that round's terminals; :meth:`AdaptiveLocalStrategy.stop_reason`, asked by the
   server loop after every round): that round is evaluated and closed as a last round, and
   ``summary.json`` says why the run stopped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.devices import compute_cost, exchange_cost
from fedsplit.strategies.compression import _DelegatingStrategy
from fedsplit.strategies.fedcs import CompletionPredictor, reply_wire_bytes
from fedsplit.simulation.wire_size import recorddict_wire_bytes

log = logging.getLogger("fedsplit")

__all__ = ["RESOURCES", "AdaptiveLocalStrategy", "BudgetController", "fednova_average", "h_bound"]


def h_bound(tau: int, eta: float, beta: float, delta: float) -> float:
    """Wang et al. (2019)'s divergence bound ``h(tau)`` (model units)."""
    if beta <= 0:
        return 0.0
    return delta / beta * ((eta * beta + 1.0) ** tau - 1.0) - eta * delta * tau


#: Resources a budget can be set in, with their unit.
RESOURCES: dict[str, str] = {"time": "s", "energy": "J"}


@dataclass
class BudgetController:
    """Chooses local epochs per round under a total resource budget (Wang et al. 2019).

    Parameters
    ----------
    budget : float
        Total of the resource the run may use (> 0): seconds of simulated time, or joules.
    max_tau : int
        Largest number of local epochs considered.
    eta : float
        Local learning rate.
    resource : str
        ``time`` (simulated seconds) or ``energy`` (joules, terminals + edge server).

    Attributes
    ----------
    spent : float
        What the run has used so far (measured; the resource's unit).
    overhead : float
        The last round's measured cost beyond its prediction (>= 0), added to every prediction.
    """

    budget: float
    max_tau: int
    eta: float
    resource: str = "time"
    spent: float = 0.0
    overhead: float = 0.0
    beta: float = 0.0
    delta: float = 0.0
    rho: float = 0.0
    eps2: float = 0.0
    history: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.resource not in RESOURCES:
            raise ValueError(f"budget resource {self.resource!r}: unknown (allowed: {', '.join(RESOURCES)})")
        if not self.budget > 0:
            raise ValueError(f"resource budget = {self.budget}: must be > 0 {self.unit}")
        if self.max_tau < 1:
            raise ValueError(f"strategy.max_local_epochs = {self.max_tau}: must be >= 1")

    @property
    def unit(self) -> str:
        """``s`` or ``J``."""
        return RESOURCES[self.resource]

    @property
    def left(self) -> float:
        """What is left of the budget (may be negative after a round that overran it)."""
        return self.budget - self.spent

    def choose(self, cost: Callable[[int], float]) -> int:
        """Local epochs for the next round.

        Parameters
        ----------
        cost : callable
            ``tau -> predicted cost of a round at base tau`` (the resource's unit), before the
            measured :attr:`overhead`.
        """
        total = lambda t: cost(t) + self.overhead  # noqa: E731
        affordable = [t for t in range(1, self.max_tau + 1) if total(t) <= self.left]
        if not affordable or self.beta <= 0 or self.delta <= 0 or self.rho <= 0 or self.eps2 <= 0 or self.progress <= 0:
            tau = 1  # nothing affordable (the loop stops the run after it), or no estimates yet: Wang et al. start with 1
        else:
            def gain(t: int) -> float:
                return t / total(t) * (self.progress - self.rho * h_bound(t, self.eta, self.beta, self.delta) / (t * self.eps2))

            tau = max(affordable, key=lambda t: (gain(t), -t))
        self.history.append(tau)
        return tau

    def observe(self, beta: float, delta: float, rho: float) -> None:
        """Update the estimates (positive and finite values only; others are ignored)."""
        for name, value in (("beta", beta), ("delta", delta), ("rho", rho)):
            if math.isfinite(value) and value > 0:
                setattr(self, name, value)
        if self.eps2 <= 0 and self.rho > 0 and self.beta > 0 and self.delta > 0 and self.progress > 0:
            # balanced at max_tau: rho h(T) / (T eps^2) = progress / 2
            penalty = self.rho * h_bound(self.max_tau, self.eta, self.beta, self.delta) / self.max_tau
            self.eps2 = max(2.0 * penalty / self.progress, 1e-12)

    @property
    def progress(self) -> float:
        """Wang et al.'s progress term ``eta (1 - beta eta / 2)`` (model units)."""
        return self.eta * (1.0 - self.beta * self.eta / 2.0)

    def stop_reason(self, next_round_cost: float) -> str | None:
        """Why no further round fits the budget (None while one does).

        Parameters
        ----------
        next_round_cost : float
            Predicted cost of the cheapest next round (one epoch), before :attr:`overhead`.
        """
        need = next_round_cost + self.overhead
        if need <= self.left:
            return None
        return (
            f"resource budget spent: {self.spent:.6g} of {self.budget:.6g} {self.unit} of {self.resource} used, "
            f"and the cheapest next round needs about {need:.4g} {self.unit}"
        )


def fednova_average(
    global_state: dict[str, np.ndarray], locals_: list[dict[str, np.ndarray]], num_examples: list[int], steps: list[int]
) -> dict[str, np.ndarray]:
    """FedNova's aggregate (see the module docstring) of local models after ``steps`` SGD steps.

    Non-float arrays (integer buffers) take the example-weighted average, rounded.

    Raises
    ------
    ValueError
        When the lists differ in length, are empty, or a terminal took no step.
    """
    if not locals_ or not (len(locals_) == len(num_examples) == len(steps)):
        raise ValueError(f"fednova_average: {len(locals_)} models, {len(num_examples)} example counts, {len(steps)} step counts")
    if min(steps) < 1:
        raise ValueError(f"fednova_average: a terminal took {min(steps)} steps (need >= 1)")
    total = float(sum(num_examples))
    p = [n / total for n in num_examples]
    tau_eff = sum(pi * t for pi, t in zip(p, steps))
    out: dict[str, np.ndarray] = {}
    for key, w in global_state.items():
        if np.issubdtype(w.dtype, np.floating):
            direction = sum(pi * (w.astype(np.float64) - loc[key].astype(np.float64)) / t for pi, loc, t in zip(p, locals_, steps))
            out[key] = (w.astype(np.float64) - tau_eff * direction).astype(w.dtype)
        else:
            out[key] = np.rint(sum(pi * loc[key].astype(np.float64) for pi, loc in zip(p, locals_))).astype(w.dtype)
    return out


class AdaptiveLocalStrategy(_DelegatingStrategy):
    """Per-terminal local epochs chosen from the device profiles, FedNova averaging.

    Parameters
    ----------
    inner : Strategy
        Configures the round (which terminals, base config); its ``aggregate_train`` is not used.
    predictor : CompletionPredictor
        Per-terminal FLOPs, bytes and times.
    max_epochs : int
        Most local epochs of any terminal in a round.
    controller : BudgetController, optional
        Chooses the base epochs per round under a time budget; without one the base is the
        configured ``local-epochs``.
    """

    def __init__(self, inner: Strategy, predictor: CompletionPredictor, *, max_epochs: int = 8, controller: BudgetController | None = None) -> None:
        super().__init__(inner)
        if max_epochs < 1:
            raise ValueError(f"strategy.max_local_epochs = {max_epochs}: must be >= 1")
        self.predictor = predictor
        self.max_epochs = int(max_epochs)
        self.controller = controller
        self._sent: dict[str, np.ndarray] = {}
        self._epochs: dict[int, int] = {}
        self._batch = 32
        self._plan: dict[int, tuple[float, float, float, float]] = {}
        self._slowest = -1
        self._base = 1
        self._deadline_s = 0.0
        self._round_start = 0.0
        self._prev: tuple[dict[str, np.ndarray], dict[int, np.ndarray], dict[int, float]] | None = None
        self.epochs_history: list[dict[int, int]] = []

    def _costs(self, pid: int, message: Message, batch: int) -> tuple[float, float, float, float]:
        """Predicted for terminal ``pid``: (communication s, compute s per epoch, communication J,
        compute J per epoch)."""
        profile = self.predictor.profile_of(pid)
        epoch_flops = self.predictor.flops(pid, batch, 1)
        arrays = message.content.array_records["arrays"]
        up = reply_wire_bytes(arrays, self.predictor.samples_of(pid), epoch_flops, pid)
        down = recorddict_wire_bytes(message.content)
        comm = exchange_cost(profile, 0, up, down)
        epoch = compute_cost(profile, epoch_flops)
        return comm.total_s, epoch.compute_s, comm.energy_j, epoch.energy_j

    def epochs_for(self, base: int) -> dict[int, int]:
        """Each configured terminal's epochs when the slowest does ``base`` (rule 1), none past
        the round deadline (``clock.round_deadline_s``) where the slowest's one epoch fits it."""
        slow_comm, slow_epoch = self._plan[self._slowest][:2]
        target = slow_comm + base * slow_epoch
        if 0 < slow_comm + slow_epoch <= self._deadline_s < target:
            target = self._deadline_s  # more epochs would make stragglers of the terminals FedCS chose
        out = {}
        for pid, (comm, per_epoch, _, _) in self._plan.items():
            epochs = int((target - comm) / per_epoch + 1e-9) if per_epoch > 0 else self.max_epochs
            out[pid] = max(1, min(self.max_epochs, epochs))
        return out

    def round_cost(self, base: int) -> float:
        """Predicted cost of this round's terminals at base ``base``: seconds (the slowest
        exchange) or joules (the sum of their exchanges), by the controller's resource."""
        epochs = self.epochs_for(base)
        if self.controller is not None and self.controller.resource == "energy":
            return sum(cj + epochs[pid] * ej for pid, (_, _, cj, ej) in self._plan.items())
        return max(cs + epochs[pid] * es for pid, (cs, es, _, _) in self._plan.items())

    def _used(self, grid: Grid) -> float:
        """What the run has used so far of the controller's resource (measured by the grid)."""
        used = getattr(grid, "resources_used", None)
        if not callable(used):
            raise TypeError(f"a resource budget needs fedsplit's metered grid (resources_used), not {type(grid).__name__}")
        seconds, joules = used()
        return joules if self.controller is not None and self.controller.resource == "energy" else seconds

    def stop_reason(self, grid: Grid) -> str | None:
        """After a round: why the budget allows no further round (None without a controller, or
        while one fits). Records the round's measured cost beyond its prediction."""
        if self.controller is None or not self._plan:
            return None
        now = self._used(grid)
        self.controller.spent = now
        self.controller.overhead = max(0.0, (now - self._round_start) - self.round_cost(self._base))
        return self.controller.stop_reason(self.round_cost(1))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        self._sent = {k: np.array(v) for k, v in record_views(arrays).items()}
        base_config = messages[0].content.config_records.get("config", ConfigRecord())
        self._batch = batch = int(base_config.get("batch-size", 32))
        partition_of = getattr(grid, "partition_of")
        pids = [partition_of(m.metadata.dst_node_id) for m in messages]
        self._deadline_s = float(getattr(grid, "round_deadline_s", 0.0) or 0.0)
        self._plan = {pid: self._costs(pid, m, batch) for pid, m in zip(pids, messages)}
        self._slowest = max(pids, key=lambda p: (self._plan[p][0] + self._plan[p][1], p))
        base = int(base_config.get("local-epochs", 1))
        if self.controller is not None:
            self._round_start = self.controller.spent = self._used(grid)
            base = self.controller.choose(self.round_cost)
        self._base = base
        self._epochs = self.epochs_for(base)
        out = []
        for pid, m in zip(pids, messages):
            cfg = ConfigRecord(dict(m.content.config_records.get("config", ConfigRecord())))
            cfg["local-epochs"] = self._epochs[pid]
            content = RecordDict({"arrays": m.content.array_records["arrays"], "config": cfg})
            out.append(Message(content, dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type, group_id=m.metadata.group_id))
        self.epochs_history.append(dict(self._epochs))
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [r for r in replies if not r.has_error()]
        if not replies:
            return None, None
        locals_, counts, steps, losses, pids = [], [], [], [], []
        for reply in replies:
            metrics = reply.content.metric_records["metrics"]
            pid = int(metrics.get("partition-id", -1))
            n = int(metrics["num-examples"])
            if n <= 0:
                continue
            epochs = self._epochs.get(pid, 1)
            locals_.append({k: np.array(v) for k, v in record_views(reply.content.array_records["arrays"]).items()})
            counts.append(n)
            steps.append(epochs * math.ceil(n / self._batch))
            losses.append(float(metrics.get("train-loss", 0.0)))
            pids.append(pid)
        if not locals_:
            return None, None
        new = fednova_average(self._sent, locals_, counts, steps)
        total = float(sum(counts))
        out = MetricRecord(
            {
                "train-loss": sum(n * l for n, l in zip(counts, losses)) / total,
                "local-epochs-min": min(self._epochs[p] for p in pids if p in self._epochs) if self._epochs else 0,
                "local-epochs-max": max(self._epochs[p] for p in pids if p in self._epochs) if self._epochs else 0,
                "tau-eff": sum(n * t for n, t in zip(counts, steps)) / total,
            }
        )
        if self.controller is not None:
            self._estimate(locals_, counts, steps, losses, pids, new)
            out["controller-epochs"] = self.controller.history[-1]
        return array_record_from_state(new), out

    def _estimate(self, locals_, counts, steps, losses, pids, new) -> None:  # noqa: ANN001
        """Estimate beta, delta, rho from pseudo-gradients and feed the controller."""
        eta = self.controller.eta
        flat = lambda state: np.concatenate([np.ravel(state[k]).astype(np.float64) for k in sorted(state) if np.issubdtype(state[k].dtype, np.floating)])  # noqa: E731
        w = flat(self._sent)
        grads = {pid: (w - flat(loc)) / (eta * t) for pid, loc, t in zip(pids, locals_, steps)}
        p = np.array(counts, dtype=np.float64) / sum(counts)
        g = sum(pi * grads[pid] for pi, pid in zip(p, pids))
        delta = float(sum(pi * np.linalg.norm(grads[pid] - g) for pi, pid in zip(p, pids)))
        beta = rho = float("nan")
        if self._prev is not None:
            w_prev, grads_prev, loss_prev = self._prev
            dw = np.linalg.norm(w - w_prev)
            common = [pid for pid in pids if pid in grads_prev]
            if dw > 0 and common:
                beta = float(np.mean([np.linalg.norm(grads[pid] - grads_prev[pid]) for pid in common]) / dw)
                loss_now = dict(zip(pids, losses))
                rho = float(np.mean([abs(loss_now[pid] - loss_prev[pid]) for pid in common]) / dw)
        self._prev = (w, grads, dict(zip(pids, losses)))
        self.controller.observe(beta, delta, rho)
