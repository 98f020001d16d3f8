"""Compute metering of any ClientApp: FlopCounterMode counts, the timed fallback, the mod, precedence."""

from __future__ import annotations

import csv
import importlib
import os
import sys

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity
from torch.utils.flop_counter import FlopCounterMode

from fedsplit.clients.flop_meter import (
    METER_KEY,
    METHOD_CODES,
    flop_meter_mod,
    host_flops_per_cpu_s,
    measure,
    metered_call,
    read_meter_record,
)
from fedsplit.devices import Population, builtin_profiles
from fedsplit.ledger import Ledger
from fedsplit.simulation.engine import RayEngine
from fedsplit.simulation.metered_grid import MeteredGrid
from tests.conftest import REPO, fedsplit_cmd, run_child

APPS = REPO / "tests" / "apps"
ROWS, COLS, OUT = 64, 32, 16
MATMUL_FLOPS = 2 * ROWS * COLS * OUT  # what FlopCounterMode counts for (ROWS x COLS) @ (COLS x OUT)


# --- apps ------------------------------------------------------------------------------------------
def reply(msg: Message, **metrics: float) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, **metrics})}), reply_to=msg)


def torch_work() -> None:
    torch.ones(ROWS, COLS) @ torch.ones(COLS, OUT)


NUMPY_N, NUMPY_REPEATS = 256, 60
NUMPY_FLOPS = 2 * NUMPY_N**3 * NUMPY_REPEATS  # 2 GFLOP: ~20-40 ms on one core


def numpy_work() -> None:
    """Numpy matmuls: compute that FlopCounterMode does not see."""
    a = np.full((NUMPY_N, NUMPY_N), 1.0 / NUMPY_N, dtype=np.float32)
    for _ in range(NUMPY_REPEATS):
        a = a @ a


def make_app(mods: list | None = None, report: bool = False) -> ClientApp:
    """``train`` computes with torch, ``evaluate`` with numpy only; ``report`` adds a ``"flops"`` metric."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch_work()
        return reply(msg, flops=123) if report else reply(msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        numpy_work()
        return reply(msg)

    return app


@pytest.fixture
def task_identity():
    """Messages created in this process need a run identity (fedsplit's engine claims one)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
    yield


def message(message_type: str, dst: int = 1) -> Message:
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=dst, message_type=message_type, group_id="1")
    msg.metadata.__dict__["_message_id"] = f"{message_type}-{dst}"
    return msg


def context() -> Context:
    return Context(run_id=7, node_id=1, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(), run_config={})


# --- metered_call and the mod, in process --------------------------------------------------------
def mixed_work() -> None:
    """Operators of every kind: inference mode, no_grad, functional, attention with backward, conv."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.GELU(), torch.nn.Linear(30, 5))
    x = torch.randn(7, 20)
    with torch.inference_mode():
        net(x)
    with torch.no_grad():
        torch.nn.functional.linear(x, torch.randn(4, 20))
        torch.einsum("ij,jk->ik", x, torch.randn(20, 3))
    q = torch.randn(2, 3, 8, 16, requires_grad=True)
    torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    net(x).sum().backward()
    torch.nn.functional.conv_transpose2d(torch.randn(1, 3, 9, 9), torch.randn(3, 2, 3, 3))
    torch.baddbmm(torch.randn(3, 4, 6), torch.randn(3, 4, 5), torch.randn(3, 5, 6))


def test_meter_counts_what_flop_counter_mode_counts():
    reference = FlopCounterMode(display=False)
    with reference:
        mixed_work()
    _, measured = measure(mixed_work)
    assert measured.method == "counted"
    assert measured.flops == reference.get_total_flops() > 0


def test_metered_call_counts_torch_and_times_numpy(task_identity):
    app = make_app()
    out, flops, method = metered_call(app, message("train"), context())
    assert (flops, method) == (MATMUL_FLOPS, "counted")
    assert METER_KEY not in out.content  # the engine hook leaves the reply as the app sent it
    _, flops, method = metered_call(app, message("evaluate"), context())
    assert method == "timed" and flops >= NUMPY_FLOPS / 10  # CPU seconds x the host's calibrated rate
    assert host_flops_per_cpu_s() > 1e8  # FLOP per CPU second: any host does 0.1 GFLOP/s


def test_mod_adds_its_record_only_when_the_app_reports_no_flops(task_identity):
    metered = make_app(mods=[flop_meter_mod])
    out = metered(message("train"), context())
    assert read_meter_record(out.content) == (MATMUL_FLOPS, "counted")
    assert out.content[METER_KEY]["method"] == METHOD_CODES["counted"]
    flops, method = read_meter_record(metered(message("evaluate"), context()).content)
    assert method == "timed" and flops > 0

    reporting = make_app(mods=[flop_meter_mod], report=True)
    out = reporting(message("train"), context())
    assert list(out.content.keys()) == ["metrics"]  # nothing added: the app's own count stands
    assert out.content["metrics"]["flops"] == 123


def test_mod_steps_aside_under_the_engine_hook(task_identity):
    out, flops, method = metered_call(make_app(mods=[flop_meter_mod]), message("train"), context())
    assert METER_KEY not in out.content  # counted once, by the engine, and not sent
    assert (flops, method) == (MATMUL_FLOPS, "counted")


class FakeGrid:
    """An inner grid that may or may not measure compute."""

    def __init__(self, measured: tuple[int, str] | None) -> None:
        self.measured = measured

    def measured_compute(self, reply: Message) -> tuple[int, str] | None:
        return self.measured


def test_ledger_precedence_reported_then_engine_then_mod_then_none(task_identity):
    population = Population({"laptop": 1}, builtin_profiles())

    def compute_of(content: RecordDict, engine: tuple[int, str] | None) -> tuple[int, str]:
        grid = MeteredGrid(FakeGrid(engine), population, Ledger(), seed=0, partition_of=lambda n: n - 1)
        return grid._compute_of(Message(content, reply_to=message("train")))

    mod_record = MetricRecord({"flops": 50, "method": METHOD_CODES["timed"]})
    both = RecordDict({"metrics": MetricRecord({"flops": 7}), METER_KEY: mod_record})
    assert compute_of(both, (9, "counted")) == (7, "reported")
    assert compute_of(RecordDict({METER_KEY: mod_record}), (9, "counted")) == (9, "counted")
    assert compute_of(RecordDict({METER_KEY: mod_record}), None) == (50, "timed")
    assert compute_of(RecordDict({"metrics": MetricRecord({"n": 1})}), None) == (0, "none")


# --- fedsplit's engine -----------------------------------------------------------------------------
def run_phase(engine: RayEngine, message_type: str) -> tuple[list, list[Message]]:
    """One exchange with every terminal through a MeteredGrid: the ledger rows and the replies."""
    ledger = Ledger()
    grid = MeteredGrid(engine.grid(), engine.population, ledger, seed=0, partition_of=engine.partition_of, emulate_availability=False)
    grid.begin_round(1)
    msgs = [
        Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=n, message_type=message_type, group_id="1")
        for n in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(msgs))
    return ledger.rows, replies


def test_engine_meters_an_app_that_reports_nothing(ray_session):
    # The app has the mod installed too: under the engine hook it adds nothing, so nothing counts twice.
    population = Population({"laptop": 2}, builtin_profiles())
    with RayEngine(make_app(mods=[flop_meter_mod]), population, num_actors=1, meter="auto") as engine:
        rows, replies = run_phase(engine, "train")
        assert [(r.status, r.flops, r.flops_method) for r in rows] == [("ok", MATMUL_FLOPS, "counted")] * 2
        assert all(r.compute_s > 0 for r in rows)
        assert all(METER_KEY not in rep.content for rep in replies)
        rows, _ = run_phase(engine, "evaluate")
        assert all(r.status == "ok" and r.flops_method == "timed" and r.flops > 0 and r.compute_s > 0 for r in rows)


def test_fedsplit_app_reports_its_own_flops_and_is_not_metered(ray_session):
    from fedsplit.clients.app import make_client_app
    from fedsplit.clients.arrays import array_record_from_state
    from fedsplit.config import load_config
    from fedsplit.devices import resolve_profiles
    from fedsplit.learning import config_to_json, task_for

    cfg = load_config(None, ["model.name=mlp", "devices={laptop=2}", "rounds=1", "train.local_epochs=1", "progress=false"])
    config_json = config_to_json(cfg)
    app = make_client_app(config_json=config_json)
    assert app.reports_flops is True
    population = Population(cfg.devices, resolve_profiles(cfg.profiles))
    with RayEngine(app, population, num_actors=1) as engine:
        assert engine.meter is False  # auto: the app reports, the hook is skipped
        inner = engine.grid()
        ledger = Ledger()
        grid = MeteredGrid(inner, population, ledger, seed=0, partition_of=engine.partition_of, emulate_availability=False)
        grid.begin_round(1)
        arrays = array_record_from_state(task_for(config_json).model.state_dict())
        msgs = [
            Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}), dst_node_id=n, message_type="train", group_id="1")
            for n in grid.get_node_ids()
        ]
        grid.send_and_receive(msgs)
    assert [(r.status, r.flops_method) for r in ledger.rows] == [("ok", "reported")] * 2
    assert all(r.flops > 0 and r.compute_s > 0 for r in ledger.rows)
    assert inner._measured == {}  # nothing measured, nothing kept


def test_engine_measurements_do_not_pile_up(ray_session):
    # Forced metering of an app that reports: the measurements are never read, and the store is capped.
    population = Population({"laptop": 2}, builtin_profiles())
    with RayEngine(make_app(report=True), population, num_actors=1, meter="always") as engine:
        grid = engine.grid()
        grid._measured_cap = 3
        for _ in range(3):
            grid.send_and_receive([message("train", n) for n in grid.get_node_ids()])
        assert len(grid._measured) == 3
        assert all(v == (MATMUL_FLOPS, "counted") for v in grid._measured.values())


# --- acceptance: a Flower quickstart app under ``fedsplit run-app`` -------------------------------
def independent_train_flops(partition_id: int, nodes: int, epochs: int, batch_size: int) -> int:
    """FlopCounterMode's count of the quickstart's local training: same batch sizes and epochs."""
    sys.path.insert(0, str(APPS))
    try:
        task = importlib.import_module("quickstart_cifar.task")
    finally:
        sys.path.remove(str(APPS))
    trainloader, _ = task.load_data(partition_id, nodes, batch_size)
    n = len(trainloader.dataset)
    net, total = task.Net(), 0
    for _ in range(epochs):
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            counter = FlopCounterMode(display=False)
            with counter:
                loss = torch.nn.functional.cross_entropy(net(torch.zeros((size, *task.IMAGE_SHAPE))), torch.zeros(size, dtype=torch.long))
                loss.backward()
            total += counter.get_total_flops()
    return total


@pytest.mark.slow
def test_quickstart_app_train_rows_are_counted_exactly_under_run_app(tmp_path):
    nodes, epochs, batch_size = 3, 2, 16
    args = [
        "run-app", "quickstart_cifar.server_app:app", "quickstart_cifar.client_app:app", "--nodes", str(nodes),
        "--run-config", "num-server-rounds=2", "--run-config", f"local-epochs={epochs}",
        "--run-config", f"batch-size={batch_size}", "--run-config", "lr=0.01", "--out", str(tmp_path),
    ]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = run_child(fedsplit_cmd(*args), 600, cwd=APPS, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "clients.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [r for r in rows if r["phase"] == "train"]
    assert len(train) == 2 * nodes and all(r["status"] == "ok" for r in train)
    expected = {pid: independent_train_flops(pid, nodes, epochs, batch_size) for pid in range(nodes)}
    for row in train:
        assert row["flops_method"] == "counted"
        assert int(row["flops"]) == pytest.approx(expected[int(row["client_id"])], rel=0.05)
        assert float(row["compute_s"]) > 0
    evaluate = [r for r in rows if r["phase"] == "evaluate"]
    assert evaluate and all(r["flops_method"] == "counted" and int(r["flops"]) > 0 for r in evaluate)
