"""Measured device profiles and late-joining nodes, without processes.

The FLOP/s probe, the link fit and the profile they give (:mod:`fedsplit.devices.probe`); the
ClientApp's measuring mod (:mod:`fedsplit.clients.measure_mod`); and the metered Grid over a fake
deployment Grid that delivers to fedsplit's real ClientApp in this process: exchanges are timed,
measured seconds land next to the modelled ones, and a node that connects after the first round
takes its terminal from the next round on. The same paths with real SuperLink/SuperNode
processes are in tests/test_deploy.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict

from fedsplit.clients.app import make_client_app
from fedsplit.clients.measure_mod import MEASURED_KEY, PROBE_STATE, measure_mod
from fedsplit.config import load_config
from fedsplit.devices import Population, builtin_profiles
from fedsplit.devices import probe as probe_module
from fedsplit.devices.probe import LinkFit, fit_link, measured_profile, probe_flops_per_s
from fedsplit.learning import config_to_json
from fedsplit.ledger import Ledger
from fedsplit.simulation.metered_grid import MeteredGrid

LAPTOP = builtin_profiles()["laptop"]


pytestmark = pytest.mark.usefixtures("task_identity")  # tests/conftest.py


# --- the probe and the profile -------------------------------------------------------------------
def test_probe_times_products_and_reports_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(probe_module.time, "perf_counter", lambda: next(ticks) * 0.01)  # every reading 10 ms later
    probe = probe_flops_per_s(budget_s=0.1, n=32)
    assert probe.flops_per_s == pytest.approx(2 * 32**3 / 0.01)  # each product read as 10 ms
    assert probe.products >= 3 and probe.n == 32
    assert probe.seconds >= 0.1  # it used its budget, then stopped


def test_probe_on_this_machine_is_short_and_positive() -> None:
    probe = probe_flops_per_s()  # the ClientApp's call
    assert math.isfinite(probe.flops_per_s) and probe.flops_per_s > 1e6
    assert probe.products >= 3 and probe.threads >= 1
    with pytest.raises(ValueError, match="budget_s"):
        probe_flops_per_s(budget_s=0)


def test_link_fit_recovers_overhead_and_throughput() -> None:
    sizes = [200, 50_000, 120_000, 400_000]
    seconds = [1.5 + 8 * b / 10e6 for b in sizes]  # 1.5 s per exchange + 10 Mbit/s
    fit = fit_link(sizes, seconds)
    assert fit.overhead_s == pytest.approx(1.5) and fit.bps == pytest.approx(10e6)
    assert fit.samples == 4
    # through Flower: 1.5 s per exchange +- 0.2 s of polling jitter, 2 x 2 MB at 10 Mbit/s stand out of it
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, 8)
    sizes = [200, 4_000_000] * 4
    noisy = fit_link(sizes, [1.5 + j + 8 * b / 10e6 for b, j in zip(sizes, jitter)])
    assert noisy.bps == pytest.approx(10e6, rel=0.1) and noisy.overhead_s == pytest.approx(1.5, abs=0.2)
    # small messages (loopback, a small model): the transfers drown in the jitter, the mean is kept
    drowned = fit_link([200, 50_000] * 4, [1.5 + j + 8 * b / 1e9 for b, j in zip([200, 50_000] * 4, jitter)])
    assert drowned.bps is None and drowned.overhead_s == pytest.approx(1.5 + jitter.mean(), abs=1e-3)
    assert fit_link([100, 5000], [1.0, 2.0]).bps is None  # two exchanges always fit: nothing to judge by
    assert fit_link([100, 5000, 100], [2.0, 1.0, 2.0]).bps is None  # slower with fewer bytes
    assert fit_link([300, 300, 300], [1.0, 2.0, 1.5]).bps is None  # one size only
    with pytest.raises(ValueError, match="as many"):
        fit_link([1, 2], [1.0])


def test_measured_profile_replaces_only_what_was_measured() -> None:
    prof = measured_profile(LAPTOP, 3e9, LinkFit(overhead_s=0.4, bps=8e6, samples=2))
    assert prof.name == LAPTOP.name and prof.kappa == LAPTOP.kappa and prof.cpu_hz == LAPTOP.cpu_hz
    assert (prof.flops_per_s, prof.uplink_bps, prof.downlink_bps, prof.link_latency_s) == (3e9, 8e6, 8e6, 0.2)
    unresolved = measured_profile(LAPTOP, None, LinkFit(overhead_s=1.0, bps=None, samples=2))
    assert unresolved.flops_per_s == LAPTOP.flops_per_s and unresolved.uplink_bps == LAPTOP.uplink_bps
    assert unresolved.link_latency_s == 0.5
    assert measured_profile(LAPTOP) == LAPTOP
    with pytest.raises(ValueError, match="flops_per_s"):
        measured_profile(LAPTOP, -1.0)


# --- the ClientApp's measuring mod ---------------------------------------------------------------
def _context(**node_config: object) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, **node_config}, state=RecordDict(), run_config={})


def _echo(msg: Message, ctx: Context) -> Message:  # noqa: ARG001
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": 0})}), reply_to=msg)


def _query() -> Message:
    return Message(RecordDict(), dst_node_id=7, message_type="query")


def test_measure_mod_probes_once_per_run_and_times_every_message() -> None:
    ctx = _context(profile="measure")
    first = measure_mod(_query(), ctx, _echo).content[MEASURED_KEY]
    assert PROBE_STATE in ctx.state.config_records
    assert first["flops-per-s"] > 0 and first["compute-s"] >= 0 and 0 < first["probe-s"] < 5
    second = measure_mod(_query(), ctx, _echo).content[MEASURED_KEY]
    assert second["flops-per-s"] == first["flops-per-s"] and "probe-s" not in second  # from Context.state


def test_measure_mod_leaves_declared_nodes_alone() -> None:
    for ctx in (_context(), _context(profile="declared")):
        reply = measure_mod(_query(), ctx, _echo)
        assert MEASURED_KEY not in reply.content and PROBE_STATE not in ctx.state.config_records
    with pytest.raises(ValueError, match='profile = "mesure"'):
        measure_mod(_query(), _context(profile="mesure"), _echo)


# --- the metered Grid over a fake deployment ------------------------------------------------------
class FakeDeployment:
    """Push/pull like Flower's deployment Grid; fedsplit's ClientApp answers in this process.

    Each node has its own node config and ``Context.state``; ``connected`` says which are up.
    """

    def __init__(self, config_json: str, num_partitions: int, measure: bool, declared: dict[int, str] | None = None) -> None:
        self.app = make_client_app(config_json=config_json)
        self.contexts = {
            100 + p: Context(run_id=1, node_id=100 + p, state=RecordDict(), run_config={},
                             node_config={"partition-id": p, "num-partitions": num_partitions, **({"profile": "measure"} if measure else {}),
                                          **({"device-profile": declared[p]} if p in (declared or {}) else {})})
            for p in range(num_partitions)
        }
        self.connected: list[int] = []
        self._inbox: dict[str, Message] = {}
        self._ids = itertools.count()
        self.received: list[tuple[int, str]] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.connected)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            self._inbox[mid] = msg
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = []
        for mid in message_ids:
            msg = self._inbox.pop(mid)
            node = msg.metadata.dst_node_id
            self.received.append((node, msg.metadata.message_type))
            replies.append(self.app(msg, self.contexts[node]))
        return replies


def _metered(fake: FakeDeployment, min_nodes: int) -> tuple[MeteredGrid, Ledger]:
    ledger = Ledger()
    grid = MeteredGrid(fake, Population({"laptop": 3}, builtin_profiles()), ledger, seed=0, min_nodes=min_nodes, wait_s=5)
    grid._timed = True  # what a real deployment Grid (flwr's HttpGrid) turns on
    return grid, ledger


def _train_round(grid: MeteredGrid, server_round: int, initial: dict) -> list[Message]:
    from fedsplit.clients.arrays import array_record_from_state
    from flwr.app import ConfigRecord

    grid.begin_round(server_round)
    messages = [
        Message(RecordDict({"arrays": array_record_from_state(initial), "config": ConfigRecord({"server-round": server_round})}),
                dst_node_id=node, message_type="train", group_id=str(server_round))
        for node in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(messages))
    grid.close_round()
    return replies


@pytest.fixture(scope="module")
def tiny_run() -> tuple[str, dict]:
    from fedsplit.learning import task_for

    cfg = load_config(None, ["devices={laptop=3}", "model.name=mlp", "train.local_epochs=1", "train.batch_size=64"])
    text = config_to_json(cfg)
    return text, task_for(text).initial_state()


def test_node_joining_late_trains_from_the_next_round(tiny_run: tuple[str, dict]) -> None:
    config_json, initial = tiny_run
    fake = FakeDeployment(config_json, 3, measure=False)
    fake.connected = [100, 102]  # terminal 1's SuperNode is not up yet
    grid, ledger = _metered(fake, min_nodes=2)
    assert len(_train_round(grid, 1, initial)) == 2
    fake.connected.append(101)  # it connects during round 1
    assert len(_train_round(grid, 2, initial)) == 3
    assert [ledger.online[1], ledger.online[2]] == [2, 3]
    assert sorted(r.client_id for r in ledger.rows_of(1)) == [0, 2]
    assert sorted(r.client_id for r in ledger.rows_of(2)) == [0, 1, 2]
    assert [m for n, m in fake.received if n == 101] == ["query", "train"]  # discovered once, then used
    assert all(r.measured_compute_s == 0 and r.measured_comm_s == 0 for r in ledger.rows)  # nobody measures


def test_too_few_nodes_is_one_clear_error(tiny_run: tuple[str, dict]) -> None:
    fake = FakeDeployment(tiny_run[0], 3, measure=False)
    fake.connected = [100]
    grid, _ = _metered(fake, min_nodes=2)
    grid.wait_s = 0.3
    with pytest.raises(RuntimeError, match="only 1 of 2 nodes connected within 0 s"):
        grid.get_node_ids()
    with pytest.raises(ValueError, match="min_nodes = 4"):
        _metered(fake, min_nodes=4)


def test_measuring_nodes_get_measured_profiles_and_seconds(tiny_run: tuple[str, dict]) -> None:
    config_json, initial = tiny_run
    fake = FakeDeployment(config_json, 3, measure=True)
    fake.connected = [100, 101, 102]
    grid, ledger = _metered(fake, min_nodes=0)
    replies = _train_round(grid, 1, initial)
    assert len(replies) == 3
    assert all(MEASURED_KEY not in r.content for r in replies)  # for the ledger: the strategy gets the app's records
    for r in ledger.rows:
        rate = fake.contexts[100 + r.client_id].state.config_records[PROBE_STATE]["flops-per-s"]
        assert r.compute_s == pytest.approx(r.flops / rate)  # modelled with the probed FLOP/s, not the laptop's
        assert r.measured_compute_s > 0 and r.measured_comm_s >= 0
        assert grid.profile_of(r.client_id).flops_per_s == rate
    summary = grid.measured.summary(grid.population.profile_of)
    assert sorted(summary) == ["0", "1", "2"]
    assert all(s["declared_flops_per_s"] == LAPTOP.flops_per_s and s["measured_flops_per_s"] > 0 for s in summary.values())
    assert np.all([fake.received.count((100 + p, "query")) == 1 for p in range(3)])


def test_node_declaring_another_device_class_is_left_out_with_both_named(tiny_run: tuple[str, dict], caplog: pytest.LogCaptureFixture) -> None:
    config_json, initial = tiny_run
    # terminal 0 declares the run's class, terminal 1 none, terminal 2 a Jetson where the run has a laptop
    fake = FakeDeployment(config_json, 3, measure=False, declared={0: "laptop", 2: "jetson-nano"})
    fake.connected = [100, 101, 102]
    grid, ledger = _metered(fake, min_nodes=2)
    with caplog.at_level("WARNING", logger="fedsplit"):
        assert len(_train_round(grid, 1, initial)) == 2
    assert sorted(r.client_id for r in ledger.rows_of(1)) == [0, 1]
    warning = [r.getMessage() for r in caplog.records if "node 102" in r.getMessage()]
    assert len(warning) == 1 and "jetson-nano" in warning[0] and "terminal 2 a laptop" in warning[0] and "not used" in warning[0]
    assert grid.nodes_summary() == {
        "0": {"node_id": 100, "device": "laptop", "declared": "laptop"},
        "1": {"node_id": 101, "device": "laptop", "declared": None},
    }
    _train_round(grid, 2, initial)  # asked once: a node left out is not asked again each round
    assert fake.received.count((102, "query")) == 1 and (102, "train") not in fake.received

    # with every terminal required, the run stops at once and says why
    fake = FakeDeployment(config_json, 3, measure=False, declared={2: "jetson-nano"})
    fake.connected = [100, 101, 102]
    grid, _ = _metered(fake, min_nodes=0)
    with pytest.raises(RuntimeError, match="only 2 of the 3 connected nodes are terminals of this run"):
        grid.get_node_ids()
