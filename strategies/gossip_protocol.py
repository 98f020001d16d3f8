"""Decentralized gossip training over a device graph (D-PSGD and GoSGD), without a server model.

Every terminal (graph node) keeps its own model; the emulation holds the models server-side
because fedsplit's engine reaches terminals only through messages. A step:

1. every node trains its **own** model for the configured local epochs: one ``train`` message per
   node, all in one ``grid.send_and_receive`` (the engine runs them in parallel);
2. the nodes average over the graph:

   - ``dpsgd`` (Lian et al. 2017): ``x_i <- sum_j W_ij x_j`` with Metropolis-Hastings weights
     ``W_ij = 1 / (1 + max(deg_i, deg_j))`` on edges, ``W_ii = 1 - sum_j W_ij`` (doubly stochastic,
     so the average is preserved); every edge carries one model each way;
   - ``gosgd`` (Blot et al. 2016, pairwise form): each node, in a seeded random order, averages
     with one random neighbour: ``x_i, x_j <- (x_i + x_j) / 2``; one model each way per pair.

How it appears in the ledger: only links between neighbours carry bytes. The ``train`` rows are
each node's local training: the emulation sends a node its own model and takes it back (the
engine reaches terminals only through messages), a trip through the server that server-free
gossip does not make, so those exchanges are metered on the device
(``MeteredGrid.send_and_receive(..., on_device=True)``): FLOPs, compute seconds and joules, no
bytes, no communication time. The neighbour exchanges are rows of phase ``gossip``
(``message_type`` ``gossip.dpsgd`` / ``gossip.gosgd``), one per node per neighbour it *sends* to:
``client_id`` is the sender, ``bytes_up`` the model's wire size, ``bytes_down`` 0 (the receiver's
row counts what it sends back), ``reason`` names the link ``"link i-j"``; time and energy are those
of the sender's uplink (``exchange_cost`` with no FLOPs), placed after a barrier that follows
training, in the sender's lane (its sends are sequential, the nodes' are parallel). The bytes of a
run on link ``{i, j}`` are thus ``2 x model wire size x exchanges over it``, and the run's bytes are
the sum over links. The averaging FLOPs are metered as server work in each node's lane.

Metrics per step: ``consensus-dist`` = ``sqrt(mean_i ||x_i - x_bar||^2)`` and ``consensus-rel`` =
that over ``||x_bar||``; :meth:`GossipProtocol.global_state` is ``x_bar`` (what the server loop
evaluates).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.devices import exchange_cost
from fedsplit.ledger import LedgerRow
from fedsplit.simulation.wire_size import array_record_wire_bytes
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol

log = logging.getLogger("fedsplit")

__all__ = ["GossipProtocol", "GossipSettings", "build_graph", "consensus_distance", "dpsgd_average", "gosgd_average", "mixing_matrix"]

GRAPHS = ("ring", "regular", "complete", "edges")


def build_graph(kind: str, n: int, *, degree: int = 3, edges: str = "", seed: int = 0) -> nx.Graph:
    """The device graph over terminals ``0 .. n-1``.

    Parameters
    ----------
    kind : str
        ``ring``, ``regular`` (random ``degree``-regular, seeded), ``complete`` or ``edges``.
    edges : str
        For ``edges``: ``"a-b,c-d,..."``.

    Raises
    ------
    ValueError
        Unknown kind, impossible regular graph, malformed or out-of-range edges, or a graph that is
        not connected (gossip would never reach consensus).
    """
    if kind == "ring":
        graph = nx.cycle_graph(n) if n > 2 else nx.path_graph(n)
    elif kind == "complete":
        graph = nx.complete_graph(n)
    elif kind == "regular":
        if degree >= n or (degree * n) % 2:
            raise ValueError(f"orchestration.graph_degree = {degree}: no {degree}-regular graph on {n} terminals (need degree < n and degree * n even)")
        graph = nx.random_regular_graph(degree, n, seed=seed)
    elif kind == "edges":
        graph = nx.empty_graph(n)
        for item in filter(None, (e.strip() for e in edges.split(","))):
            try:
                a, b = (int(x) for x in item.split("-"))
            except ValueError:
                raise ValueError(f"orchestration.edges: {item!r} is not 'a-b'") from None
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise ValueError(f"orchestration.edges: {item!r}: terminals are 0..{n - 1} and an edge joins two different ones")
            graph.add_edge(a, b)
    else:
        raise ValueError(f"orchestration.graph = {kind!r}: unknown (allowed: {', '.join(GRAPHS)})")
    if n > 1 and not nx.is_connected(graph):
        raise ValueError(f"orchestration.graph = {kind!r}: the graph over {n} terminals is not connected")
    return graph


def mixing_matrix(graph: nx.Graph) -> np.ndarray:
    """Metropolis-Hastings weights of ``graph`` (symmetric, doubly stochastic)."""
    n = graph.number_of_nodes()
    w = np.zeros((n, n))
    for i, j in graph.edges():
        w[i, j] = w[j, i] = 1.0 / (1 + max(graph.degree[i], graph.degree[j]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    return w


def dpsgd_average(models: list[dict[str, np.ndarray]], weights: np.ndarray) -> list[dict[str, np.ndarray]]:
    """``x_i <- sum_j W_ij x_j`` for every array key (integer arrays are left as they are)."""
    out = []
    for i in range(len(models)):
        nbrs = np.flatnonzero(weights[i])
        mixed = {}
        for key, value in models[i].items():
            if np.issubdtype(value.dtype, np.floating):
                mixed[key] = sum(weights[i, j] * models[j][key].astype(np.float64) for j in nbrs).astype(value.dtype)
            else:
                mixed[key] = value
        out.append(mixed)
    return out


def gosgd_average(models: list[dict[str, np.ndarray]], graph: nx.Graph, rng: np.random.Generator) -> tuple[list[dict[str, np.ndarray]], list[tuple[int, int]]]:
    """Each node in random order averages with one random neighbour; returns models and pairs."""
    models = [dict(m) for m in models]
    pairs = []
    for i in rng.permutation(len(models)):
        nbrs = sorted(graph.neighbors(int(i)))
        if not nbrs:
            continue
        j = int(nbrs[rng.integers(len(nbrs))])
        for key, value in models[i].items():
            if np.issubdtype(value.dtype, np.floating):
                mean = ((value.astype(np.float64) + models[j][key].astype(np.float64)) / 2).astype(value.dtype)
                models[i][key] = mean
                models[j][key] = mean.copy()
        pairs.append((int(i), j))
    return models, pairs


def _flat(model: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(v).astype(np.float64) for v in model.values() if np.issubdtype(v.dtype, np.floating)])


def consensus_distance(models: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    """``(sqrt(mean_i ||x_i - x_bar||^2), ||x_bar||)`` over the float arrays."""
    flat = np.stack([_flat(m) for m in models])
    mean = flat.mean(axis=0)
    return float(np.sqrt(((flat - mean) ** 2).sum(axis=1).mean())), float(np.linalg.norm(mean))


@dataclass
class GossipSettings:
    """``orchestration.*`` settings of gossip training.

    Attributes
    ----------
    graph, graph_degree, edges : str, int, str
        The device graph (:func:`build_graph`).
    gossip : str
        ``dpsgd`` or ``gosgd``.
    seed : int
        Seed of the graph and of GoSGD's draws.
    """

    graph: str = "ring"
    graph_degree: int = 3
    edges: str = ""
    gossip: str = "dpsgd"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.gossip not in ("dpsgd", "gosgd"):
            raise ValueError(f"orchestration.gossip = {self.gossip!r}: unknown (allowed: dpsgd, gosgd)")


class GossipProtocol(TrainingProtocol):
    """Server-free training over a device graph (see the module docstring)."""

    name = "gossip"

    def __init__(self, settings: GossipSettings) -> None:
        self.settings = settings
        self.models: list[dict[str, np.ndarray]] = []
        self.graph: nx.Graph | None = None
        self.history: list[tuple[float, float]] = []
        self.link_uses: Counter[tuple[int, int]] = Counter()
        """Exchanges over each link ``(i, j)``, ``i < j``, so far (one exchange: a model each way)."""

    def start(self, run: ProtocolRun) -> None:
        n = run.grid.population.size
        s = self.settings
        self.graph = build_graph(s.graph, n, degree=s.graph_degree, edges=s.edges, seed=s.seed)
        initial = {k: v.detach().cpu().numpy().copy() for k, v in run.initial_state.items()}
        self.models = [{k: v.copy() for k, v in initial.items()} for _ in range(n)]
        self._weights = mixing_matrix(self.graph)

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        keys = self.models[0].keys()
        out = OrderedDict()
        for key in keys:
            first = self.models[0][key]
            if np.issubdtype(first.dtype, np.floating):
                out[key] = torch.from_numpy(np.mean([m[key] for m in self.models], axis=0).astype(first.dtype))
            else:
                out[key] = torch.from_numpy(first.copy())
        return out

    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        grid = run.grid
        n = len(self.models)
        messages = []
        for pid in range(n):
            config = ConfigRecord(dict(run.train_config))
            config["server-round"] = server_round
            messages.append(Message(RecordDict({"arrays": array_record_from_state(self.models[pid]), "config": config}), dst_node_id=grid.node_of(pid), message_type="train", group_id=str(server_round)))
        losses = []
        for reply in grid.send_and_receive(messages, timeout=run.timeout_s, on_device=True):  # no link: local training
            pid = grid.partition_of(reply.metadata.src_node_id)
            self.models[pid] = {k: np.array(v) for k, v in record_views(reply.content.array_records["arrays"]).items()}
            losses.append(float(reply.content.metric_records["metrics"].get("train-loss", 0.0)))
        grid.barrier()
        model_bytes = array_record_wire_bytes(array_record_from_state(self.models[0]))
        if self.settings.gossip == "dpsgd":
            self.models = dpsgd_average(self.models, self._weights)
            links = [(i, j) for i, j in self.graph.edges()]
        else:
            rng = np.random.default_rng([self.settings.seed, server_round, 0x6055])
            self.models, links = gosgd_average(self.models, self.graph, rng)
        self._meter_links(grid, links, model_bytes)
        dist, norm = consensus_distance(self.models)
        self.history.append((dist, norm))
        return {
            "train-loss": float(np.mean(losses)) if losses else float("nan"),
            "consensus-dist": dist,
            "consensus-rel": dist / norm if norm > 0 else dist,
            "gossip-links": float(len(links)),
        }

    def _meter_links(self, grid, links: list[tuple[int, int]], model_bytes: int) -> None:  # noqa: ANN001
        """One ledger row per model sent over a link (both directions), on the senders' lanes."""
        num_values = sum(int(v.size) for v in self.models[0].values())
        kind = f"gossip.{self.settings.gossip}"
        for a, b in links:
            self.link_uses[(min(a, b), max(a, b))] += 1
            for src, dst in ((a, b), (b, a)):
                profile = grid.population.profile_of(src)
                cost = exchange_cost(profile, 0, model_bytes, 0)
                slot = grid.clock.exchange(src, cost.total_s)
                grid.ledger.add(
                    LedgerRow(
                        round=grid.current_round, phase="gossip", client_id=src, device=profile.name, status="ok",
                        reason=f"link {src}-{dst}", flops=0, compute_s=0.0, bytes_up=model_bytes, bytes_down=0,
                        comm_s=cost.comm_s, energy_j=cost.energy_j, message_type=kind,
                        seq=grid.ledger.next_seq(grid.current_round, src), start_s=slot.start_s, end_s=slot.end_s, flops_method="none",
                    )
                )
        for pid in range(len(self.models)):  # each node averages what it received: 2 FLOPs per value per term
            terms = 1 + (self.graph.degree[pid] if self.settings.gossip == "dpsgd" else 1)
            grid.server_work(2 * num_values * terms, partition_id=pid)
