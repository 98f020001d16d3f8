"""fedsplit's engine: Flower apps on Ray actors, failures, Context state, third-party apps, clusters."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsplit.config.schema import TRANSPORTS
from fedsplit.devices import Population, builtin_profiles
from fedsplit.simulation.engine import ClusterTooSmallError, RayEngine, check_local_budgets, plan_pools, split_balanced, split_evenly
from tests.conftest import REPO, fedsplit_cmd, free_port, run_child


def make_flaky_app(raise_pid: int = 1, crash_pid: int = 2) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        if pid == raise_pid and server_round == 1:
            raise ValueError(f"boom in client {pid}")
        if pid == crash_pid and server_round == 1:
            os._exit(1)  # the actor process dies
        record = context.state.config_records.get("counter", ConfigRecord({"n": 0}))
        record["n"] = int(record["n"]) + 1
        context.state["counter"] = record
        return Message(RecordDict({"metrics": MetricRecord({"n": record["n"], "pid": pid, "num-examples": 1})}), reply_to=msg)

    return app


def send_round(grid, server_round: int, nodes):
    msgs = [Message(RecordDict({"config": ConfigRecord({"server-round": server_round})}), dst_node_id=n, message_type="train", group_id=str(server_round)) for n in nodes]
    return {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs)}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_failures_stay_with_their_client_and_state_persists(ray_session, transport):
    population = Population({"raspberry-pi-4": 3, "laptop": 3}, builtin_profiles())
    with RayEngine(make_flaky_app(), population, transport=transport) as engine:
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        assert len(nodes) == 6
        first = send_round(grid, 1, nodes)
        assert set(first) == set(nodes)
        assert first[engine.node_id_of(1)].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        assert "boom in client 1" in first[engine.node_id_of(1)].error.reason
        assert first[engine.node_id_of(2)].error.code == ErrorCode.CLIENT_APP_CRASHED
        ok = [n for n in nodes if n not in (engine.node_id_of(1), engine.node_id_of(2))]
        assert all(not first[n].has_error() for n in ok)
        assert engine.actor_restarts >= 1
        second = send_round(grid, 2, nodes)
        assert all(not r.has_error() for r in second.values())
        counts = {engine.partition_of(n): int(r.content["metrics"]["n"]) for n, r in second.items()}
        # Context.state survived round 1 wherever each terminal ran; failed terminals kept none of it.
        assert counts == {0: 2, 1: 1, 2: 1, 3: 2, 4: 2, 5: 2}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_crash_loses_only_its_client_when_other_batches_are_queued_behind_it(ray_session, transport):
    # One actor, two batches queued at it at once ([0, 2] then [1, 3]); client 0 kills the process
    # while [1, 3] waits behind it. Each message is retried alone, so only client 0 fails, and its
    # own retry (which kills the fresh actor again) takes nobody with it.
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(make_flaky_app(raise_pid=-1, crash_pid=0), population, num_actors=1, batch_factor=2, transport=transport) as engine:
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        first = send_round(grid, 1, nodes)
        assert set(first) == set(nodes)
        assert first[engine.node_id_of(0)].error.code == ErrorCode.CLIENT_APP_CRASHED
        assert all(not first[engine.node_id_of(p)].has_error() for p in (1, 2, 3))
        assert engine.actor_restarts == 2
        second = send_round(grid, 2, nodes)
        assert {engine.partition_of(n): int(r.content["metrics"]["n"]) for n, r in second.items()} == {0: 1, 1: 2, 2: 2, 3: 2}


def test_batches_are_even_so_actors_finish_together():
    sizes = lambda n, parts: [len(b) for b in split_evenly(list(range(n)), parts)]  # noqa: E731
    assert sizes(10, 4) == [3, 3, 2, 2]  # 2 actors: 3+2 each, not 3+3 against 3+1
    assert sizes(3, 8) == [1, 1, 1]
    assert sizes(0, 4) == []
    assert [x for b in split_evenly(list(range(17)), 5) for x in b] == list(range(17))  # order kept


def test_balanced_batches_even_out_the_cost_longest_first():
    cost = {"a": 9.0, "b": 5.0, "c": 4.0, "d": 3.0, "e": 1.0}
    batches = split_balanced(list(cost), 2, cost.get)
    assert batches == [["a", "d"], ["b", "c", "e"]]  # 12 against 10 (an even count split: 17 against 5)
    assert sorted(x for b in batches for x in b) == sorted(cost)
    equal = split_balanced(list(range(10)), 4, lambda _: 1.0)
    assert [len(b) for b in equal] == [3, 3, 2, 2] and equal[0] == [0, 4, 8]  # dealt in turn, order kept
    assert split_balanced([], 3, lambda _: 1.0) == []


def make_sleepy_app(seconds: dict[int, float]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        time.sleep(seconds.get(pid, 0.0))
        return Message(RecordDict({"metrics": MetricRecord({"pid": pid, "num-examples": 1})}), reply_to=msg)

    return app


def test_terminals_measured_slow_get_a_batch_of_their_own_next_round(ray_session):
    # Round 1 knows nothing and deals 4 terminals to 2 actors in turn ([0, 2], [1, 3]); the actors
    # report each terminal's seconds, so round 2 puts the slow terminal 0 alone against 1, 2, 3.
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(make_sleepy_app({0: 0.4, 1: 0.02, 2: 0.02, 3: 0.02}), population, num_actors=2) as engine:
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        send_round(grid, 1, nodes)
        assert engine.last_batches == [[0, 2], [1, 3]]
        assert engine.seconds[(engine.node_id_of(0), "train")] >= 0.4
        assert 0.46 <= engine.app_s <= engine.execute_s * 2  # the four apps' seconds, summed over both actors
        second = send_round(grid, 2, nodes)
        assert all(not r.has_error() for r in second.values())
        assert [sorted(b) for b in engine.last_batches] == [[0], [1, 2, 3]]  # each batch: heaviest first
        # Replies are handed over as they arrive (a channel's batch of 3 in parts of 2 and 1): the
        # fast batch's while 0 still sleeps.
        arrived: list[list[int]] = []
        msgs = [Message(RecordDict({"config": ConfigRecord({"server-round": 3})}), dst_node_id=n, message_type="train", group_id="3")
                for n in nodes]
        replies = grid.send_and_receive(msgs, on_replies=lambda batch: arrived.append(sorted(engine.partition_of(r.metadata.src_node_id) for r in batch)))
        assert [len(part) for part in arrived] == [2, 1, 1] and sorted(arrived[0] + arrived[1]) == [1, 2, 3] and arrived[2] == [0]
        assert sorted(engine.partition_of(r.metadata.src_node_id) for r in replies) == [0, 1, 2, 3]


def test_pools_fit_the_cluster():
    assert plan_pools([(1.0, 0.0)], 2, 0) == {(1.0, 0.0): 2}
    assert plan_pools([(1.0, 0.0), (2.0, 0.0)], 4, 0) == {(1.0, 0.0): 2, (2.0, 0.0): 1}
    with pytest.raises(ClusterTooSmallError, match="num_cpus = 8.0 but the Ray cluster has 2"):
        plan_pools([(8.0, 0.0)], 2, 0)


def test_a_device_class_larger_than_the_local_ray_is_refused_before_ray_starts(tmp_path, fedsplit_main):
    from fedsplit.devices import resolve_profiles

    profiles = resolve_profiles({"big": {"base": "laptop", "num_cpus": 64}})
    with pytest.raises(ClusterTooSmallError, match="device class 'big' needs num_cpus = 64 per terminal, and the local Ray has 4 CPUs"):
        check_local_budgets(Population({"laptop": 1, "big": 1}, profiles), 4)
    check_local_budgets(Population({"laptop": 1, "big": 1}, profiles), 64)
    run = fedsplit_main("simulate", "--set", "rounds=1", "--set", "profiles={big={base='laptop', num_cpus=64}}",
                        "--set", "devices={big=2}", "--set", f"out_dir={tmp_path / 'runs'}")
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("fedsplit simulate: error: engine: ") and "num_cpus = 64" in line


QUICKSTART = '''
"""A Flower app written the way Flower's PyTorch quickstart is (ServerApp + ClientApp, Message API)."""
import torch
from sklearn.datasets import load_digits
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

RESULTS = {}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def load_data(partition_id, num_partitions):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)[partition_id::num_partitions]
    y = torch.tensor(y)[partition_id::num_partitions]
    return x, y


app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    opt = torch.optim.SGD(model.parameters(), lr=msg.content["config"]["lr"])
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"train_loss": loss.item(), "num-examples": len(x)})})
    return Message(content=content, reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = context.run_config["num-server-rounds"]
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), train_config=ConfigRecord({"lr": 0.5}), num_rounds=rounds)
    RESULTS["arrays"] = result.arrays


failing_server_app = ServerApp()


@failing_server_app.main()
def failing(grid: Grid, context: Context) -> None:
    """One round of FedAvg, then what run config ``fail-with`` names (a bug, Ctrl-C, or the engine's ActorStartError as its grid raises it)."""
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), train_config=ConfigRecord({"lr": 0.5}), num_rounds=1)
    from fedsplit.config.errors import ActorStartError

    raise {"error": RuntimeError, "interrupt": KeyboardInterrupt, "actor-start": ActorStartError}[context.run_config["fail-with"]]("after round 1")
'''


def test_third_party_quickstart_app_runs_unchanged(tmp_path, monkeypatch, ray_session):
    (tmp_path / "quickstart_app.py").write_text(QUICKSTART)
    monkeypatch.syspath_prepend(str(tmp_path))
    import quickstart_app

    from fedsplit.simulation.run_app import run_app

    ledger = run_app("quickstart_app:server_app", "quickstart_app:app", nodes=4, devices="raspberry-pi-4=2,laptop=2", run_config={"num-server-rounds": 2})
    assert "arrays" in quickstart_app.RESULTS
    assert sorted(ledger.rounds) == [1, 2]
    assert all(r.status == "ok" and r.bytes_up > 0 and r.bytes_down > 0 for r in ledger.rows)
    assert len(ledger.rows) == 8


def test_run_app_writes_a_new_folder_per_run_and_says_where(tmp_path, monkeypatch, ray_session, fedsplit_main):
    (tmp_path / "quickstart_app.py").write_text(QUICKSTART)
    monkeypatch.chdir(tmp_path)
    args = ("run-app", "quickstart_app:server_app", "quickstart_app:app", "--nodes", "2", "--run-config", "num-server-rounds=1")
    first, second = fedsplit_main(*args), fedsplit_main(*args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    outs = [run.stdout.strip().splitlines()[-1].split()[0].removeprefix("out=") for run in (first, second)]
    assert outs[0] != outs[1] and all(o.startswith("runs/run-app/") for o in outs)  # the first run's ledgers are kept
    assert all((tmp_path / o / "clients.csv").exists() and (tmp_path / o / "rounds.csv").exists() for o in outs)
    refused = fedsplit_main(*args, "--out", outs[0])
    assert refused.returncode == 2
    assert f"--out {outs[0]}: already holds a run's clients.csv and rounds.csv" in refused.stderr


@pytest.mark.parametrize(("fail_with", "code", "line"), [
    ("error", 1, "fedsplit run-app: error: the ServerApp raised RuntimeError: after round 1; the ledgers of its 1 finished round(s) are in out"),
    ("interrupt", 130, "fedsplit run-app: interrupted; the ledgers of its 1 finished round(s) are in out"),
    ("actor-start", 3, "fedsplit run-app: error: engine: after round 1; the ledgers of its 1 finished round(s) are in out"),
])
def test_run_app_keeps_the_finished_rounds_when_the_server_app_fails(tmp_path, monkeypatch, ray_session, fedsplit_main, fail_with, code, line):
    (tmp_path / "quickstart_app.py").write_text(QUICKSTART)
    monkeypatch.chdir(tmp_path)
    run = fedsplit_main("run-app", "quickstart_app:failing_server_app", "quickstart_app:app", "--nodes", "2",
                        "--run-config", f"fail-with='{fail_with}'", "--out", "out")
    assert run.returncode == code
    assert line in run.stderr.splitlines()
    rows = (tmp_path / "out" / "clients.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header, then the two terminals' round-1 exchanges
    assert (tmp_path / "out" / "rounds.csv").read_text().count("\n") == 2


def test_run_app_rejects_bad_references():
    proc = subprocess.run(fedsplit_cmd("run-app", "nope_mod:app", "x:y", "--nodes", "2"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot import 'nope_mod'" in proc.stderr


def test_run_app_names_the_module_when_given_a_file():
    from flwr.serverapp import ServerApp

    from fedsplit.simulation.run_app import AppLoadError, load_object

    with pytest.raises(AppLoadError, match=re.escape("'my_app/server_app.py:app': name the module, not its file: my_app.server_app:app")):
        load_object("my_app/server_app.py:app", ServerApp)


@pytest.mark.parametrize(
    ("nodes", "devices", "message"),
    [
        (0, None, "--nodes 0: at least 1 terminal"),
        (2, "laptop=-1,raspberry-pi-4=3", "laptop=-1: a count is an integer >= 0"),
        (2, "toaster=2", "unknown device profile 'toaster'"),
        (2, "laptop=x", "expected NAME=COUNT"),
        (3, "laptop=2", "counts add up to 2, not --nodes 3"),
    ],
)
def test_run_app_device_mix_is_checked_before_any_actor_starts(nodes, devices, message):
    from fedsplit.devices import resolve_profiles
    from fedsplit.simulation.run_app import AppLoadError, parse_devices

    with pytest.raises(AppLoadError, match=re.escape(message)):
        parse_devices(devices, nodes, resolve_profiles())
    assert parse_devices("laptop=1,raspberry-pi-4=1", 2, resolve_profiles()) == {"laptop": 1, "raspberry-pi-4": 1}


def test_attach_to_ray_cluster_on_loopback(tmp_path):
    """A head started on loopback by the test; the run's actors live in that cluster.

    The head runs with ``--block`` in its own process group so that stopping it kills only its
    processes (``ray stop`` would also kill the Ray instance other tests use).
    """
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir=/tmp/fsray-{port}"],  # short: Unix socket paths are limited to 107 bytes
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        for _ in range(120):
            if subprocess.run([ray_bin, "status", f"--address={address}"], capture_output=True, timeout=60).returncode == 0:
                break
            time.sleep(1)
        args = ["simulate", "--set", f"engine.ray_address={address}", "--set", f"out_dir={tmp_path}", "--set", "run_name=r",
                "--set", "rounds=1", "--set", "devices={laptop=2}", "--set", "model.name=mlp", "--set", "progress=false"]
        proc = run_child(fedsplit_cmd(*args), 300, cwd=REPO, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((tmp_path / "r" / "summary.json").read_text())
        assert summary["rounds"] == 1 and summary["terminals"] == 2
        assert summary["ray_address"].endswith(f":{port}")  # the actors lived in the test's cluster
        assert summary["actors"] == {"cpus=1,gpus=0": 2}
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(f"/tmp/fsray-{port}", ignore_errors=True)  # the head's session folder (logs, sockets)


def test_engine_benchmark_smoke_runs_and_models_agree():
    """``experiments/bench_engine.py --smoke``: all ways train the same model, the line parses."""
    proc = run_child([sys.executable, str(REPO / "experiments" / "bench_engine.py"), "--smoke"], 600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("workload=mlp")]
    assert [line.split()[-1] for line in lines[:3]] == ["PASS", "PASS", "PASS"], lines  # limit, fedsplit1, fedsplit vs pure
    fields = dict(item.split("=", 1) for item in lines[-1].split())
    assert {"workload", "pure_s", "fedsplit1_s", "fedsplit_s", "flower_s", "overhead", "speedup", "flower_over_fedsplit", "efficiency",
            "limit_s", "limit_efficiency", "vs_limit", "server_s"} <= set(fields)
    assert 0 < float(fields["server_s"]) < float(fields["fedsplit_s"])  # the part of the run outside the engine
    limit = float(fields["limit_s"])
    assert float(fields["vs_limit"]) == pytest.approx(limit / float(fields["fedsplit_s"]), rel=0.0005 / limit + 0.0005 / float(fields["fedsplit_s"]) + 0.001)
    pure, one, many = (float(fields[k]) for k in ("pure_s", "fedsplit1_s", "fedsplit_s"))
    assert many > 0
    # Times are printed to 3 decimals: a ratio of two of them is known to within that rounding,
    # which on a fast (or a loaded) machine is more than 1 % of sub-second times.
    slack = 0.0005 / one + 0.0005 / pure + 0.001
    assert float(fields["overhead"]) == pytest.approx(one / pure, rel=slack)
    # the same ratios within each pass, their median: of one --smoke pass, the pass whose times are printed
    assert float(fields["overhead_med"]) == pytest.approx(one / pure, rel=slack)
    assert float(fields["efficiency_med"]) == pytest.approx(float(fields["efficiency"]), rel=slack + 0.0005 / many + 0.002)
    assert float(fields["limit_efficiency_med"]) == pytest.approx(float(fields["limit_efficiency"]), rel=slack + 0.0005 / limit + 0.002)
    # where the time goes: the share of the actors' time inside the ClientApp, and the apps' speed
    # against the pure loop, multiply back to 1 / overhead (one actor) and to the efficiency
    busy1, speed1, busy, speed = (float(fields[k]) for k in ("busy1", "app_speed1", "busy", "app_speed"))
    assert 0 < busy1 <= 1 and 0 < busy <= 1 and speed1 > 0 and speed > 0
    assert busy1 * speed1 == pytest.approx(pure / one, rel=slack + 0.002)
    assert busy * speed == pytest.approx(float(fields["efficiency"]), rel=slack + 0.0005 / many + 0.002)
    assert float(fields["feeds"]) > 0  # app seconds per driver CPU second
    # the collector's seconds inside the reported fedsplit pass, and its full collections there
    assert 0 <= float(fields["gc_s"]) < many and int(fields["full_gcs"]) >= 0


INLINE_CHECK = """
import json, ray
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from fedsplit.config.schema import TRANSPORTS
from fedsplit.devices import Population, builtin_profiles
from fedsplit.simulation.engine import INLINE_OBJECT_BYTES, RayEngine

app = ClientApp()

@app.train()
def train(msg, context):
    weights = np.full(60_000, float(context.node_config["partition-id"]), dtype=np.float32)  # 240 KB
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(weights)})}), reply_to=msg)

with RayEngine(app, Population({"laptop": 2}, builtin_profiles()), num_actors=1, num_cpus=1) as engine:
    grid = engine.grid()
    msgs = [Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=n, message_type="train", group_id="1")
            for n in grid.get_node_ids()]
    replies = grid.send_and_receive(msgs)
    print(json.dumps({
        "inline": ray._private.worker.global_worker.node._config.get("max_direct_call_object_size"),
        "expected": INLINE_OBJECT_BYTES,
        "errors": [r.error.reason for r in replies if r.has_error()],
        "sums": sorted(float(r.content["arrays"]["w"].numpy().sum()) for r in replies if not r.has_error()),
    }))

from fedsplit.process_exit import exit_now

exit_now(0)  # as the fedsplit command ends: Ray's destructors at teardown can hang
"""


def test_an_engine_that_starts_ray_returns_batches_of_small_replies_inline():
    """A RayEngine that starts its own Ray raises Ray's inline-object cut to INLINE_OBJECT_BYTES
    (a batch of two 240 KB replies, over Ray's 100 KiB default, returns in the call's reply)."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = run_child([sys.executable, "-c", INLINE_CHECK], 300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["inline"] == out["expected"] == 2 * 1024 * 1024
    assert out["errors"] == [] and out["sums"] == [0.0, 60_000.0]


def test_attaching_to_a_cluster_keeps_its_settings():
    from fedsplit.simulation.engine import ray_init_options

    assert "_system_config" not in ray_init_options("127.0.0.1:6379", 4)  # Ray refuses it on attach
    assert ray_init_options(None, 4)["num_cpus"] == 4


def test_driver_benchmark_smoke_times_the_server_without_training():
    """``experiments/bench_driver.py --smoke``: the timed runs replay replies computed beforehand
    (the script asserts the ClientApp is not called again) and the bound is the ratio it states."""
    proc = run_child([sys.executable, str(REPO / "experiments" / "bench_driver.py"), "--smoke"], 600, cwd=REPO / "experiments")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("workload=mlp"))
    fields = dict(item.split("=", 1) for item in line.split())
    driver, pure = float(fields["driver_round_ms"]), float(fields["pure_round_ms"])
    assert 0 < driver <= float(fields["driver_round_median_ms"])
    assert fields["replies_per_round"] == "4"
    assert float(fields["per_reply_us"]) == pytest.approx(driver * 1e3 / 4, rel=0.01)
    assert float(fields["bound_16"]) == pytest.approx(pure / (16 * driver), rel=0.02)
