"""Secure aggregation (issue #13 item 2): the server holds masked updates and their sum only.

Each run has 4 always-online terminals, secagg with threshold 3 of 4 shares. The terminals record
their true (unmasked) update to a file from inside the masking mod, and the server's Grid is
wrapped by a spy that keeps every reply the server received. Tests check that

- no train reply carries ``"arrays"``: the masked vector the server received is not the update
  (it does not even correlate with it), and
- the new global model equals the plain FedAvg of the true updates within the quantization bound;
- a terminal that drops after sharing its keys (round 2) is tolerated: the aggregate is the FedAvg
  of the three survivors'; two dropouts (below the threshold) fail the round with its reason;
- the stages' bytes and the cryptography's compute are ledger rows and round metrics.

The same scenario runs in-process (fedsplit's serial engine) and end to end on fedsplit's Ray
engine and on Flower's simulation engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid

from fedsplit.clients.app import default_mods, make_client_app
from fedsplit.clients.secagg_client import MASKED_KEY, WEIGHT_KEY
from fedsplit.config import ConfigError, RunConfig, load_config
from fedsplit.learning import config_to_json, task_for
from fedsplit.secagg import SecAggSettings, check_survivors, neighbour_graph, quantization_error_bound
from fedsplit.simulation.loop import EmptyRoundsError
from fedsplit.simulation.server_app import RunSession, run_server

TERMINALS = 4
BASE = [
    "profiles={on = {base = 'laptop', availability = 1.0}}",
    f"devices={{on = {TERMINALS}}}",
    "model.name=mlp",
    "train.local_epochs=1",
    "progress=false",
    "secagg.enabled=true",
    "secagg.threshold=3",
]
DROP_ROUND2 = {2: {3}}  # terminal 3 drops after sharing its keys in round 2


# --- what the server receives, what the terminals really computed ----------------------------------
class SpyGrid(Grid):
    """A Grid that hands everything through and keeps each (sent message, reply) pair."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.exchanges: list[tuple[Message, Message]] = []

    def __getattr__(self, name: str):  # noqa: ANN204 - partition_of, engine... of the inner grid
        return getattr(self.inner, name)

    def set_run(self, run) -> None:  # noqa: ANN001
        self.inner.set_run(run)

    @property
    def run(self):  # noqa: ANN201
        return self.inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        messages = list(messages)
        by_node = {m.metadata.dst_node_id: m for m in messages}
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self.exchanges += [(by_node[r.metadata.src_node_id], r) for r in replies]
        return replies

    def masked_uploads(self) -> list[tuple[Message, Message]]:
        """The answered train exchanges that carried Flower's SecAgg+ record (the masked uploads)."""
        return [(m, r) for m, r in self.exchanges if m.metadata.message_type == "train" and RECORD_KEY_CONFIGS in m.content.config_records and not r.has_error()]


def _round_of(msg: Message) -> int:
    return int(msg.content.config_records["config"]["server-round"])


def make_test_mods(truth_dir: Path, drop: dict[int, set[int]]) -> list:
    """Mods (outermost first) around fedsplit's: a dropout before the masked upload (the terminal
    has shared its keys), and a recorder of the true update inside the masking mod."""

    def masked_upload(msg: Message) -> bool:
        return msg.metadata.message_type == "train" and msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records

    def drop_mod(msg: Message, ctx: Context, call_next):  # noqa: ANN001, ANN202
        if masked_upload(msg) and int(ctx.node_config["partition-id"]) in drop.get(_round_of(msg), set()):
            raise ConnectionError("terminal dropped out after sharing its keys")
        return call_next(msg, ctx)

    def truth_mod(msg: Message, ctx: Context, call_next):  # noqa: ANN001, ANN202
        reply = call_next(msg, ctx)
        if masked_upload(msg) and not reply.has_error():
            arrays = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
            n = int(reply.content.metric_records["metrics"]["num-examples"])
            np.savez(truth_dir / f"r{_round_of(msg)}-p{ctx.node_config['partition-id']}.npz", __n=n, **arrays)
        return reply

    return [drop_mod, truth_mod]


def secagg_client_app(cfg: RunConfig, truth_dir: Path, drop: dict[int, set[int]]):  # noqa: ANN201
    config_json = config_to_json(cfg)
    secagg_mod, *rest = default_mods(config_json)
    drop_mod, truth_mod = make_test_mods(truth_dir, drop)
    return make_client_app(mods=[drop_mod, secagg_mod, truth_mod, *rest], config_json=config_json)


def run_secagg(cfg: RunConfig, engine: str, truth_dir: Path, drop: dict[int, set[int]]) -> tuple[RunSession, SpyGrid]:
    """Run ``cfg`` on ``engine`` (serial | fedsplit | flower) with the test mods and a spy grid."""
    session = RunSession.from_config(cfg)
    app = secagg_client_app(cfg, truth_dir, drop)
    spies: list[SpyGrid] = []

    def serve(grid: Grid) -> None:
        spies.append(SpyGrid(grid))
        run_server(spies[-1], session)

    if engine == "serial":
        from fedsplit.simulation.engine import EngineGrid, SerialEngine

        serve(EngineGrid(SerialEngine(app, session.population)))
    elif engine == "fedsplit":
        from fedsplit.simulation.engine import RayEngine

        with RayEngine.from_run_config(cfg, app) as ray_engine:
            serve(ray_engine.grid())
    else:
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        from fedsplit.simulation.runner import flower_keeps_callers_ray

        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:  # noqa: ARG001
            try:
                serve(grid)
            except BaseException as exc:
                session.error = exc
                raise

        with flower_keeps_callers_ray():
            run_simulation(server_app=server_app, client_app=app, num_supernodes=TERMINALS,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"include_dashboard": False}})
        if session.error is not None:
            raise session.error
    return session, spies[0]


def truths(truth_dir: Path, server_round: int) -> dict[int, tuple[int, dict[str, np.ndarray]]]:
    """Each terminal's ``(num-examples, true update)`` of ``server_round``, by partition id."""
    out = {}
    for path in sorted(truth_dir.glob(f"r{server_round}-p*.npz")):
        with np.load(path) as data:
            out[int(path.stem.split("-p")[1])] = (int(data["__n"]), {k: data[k] for k in data.files if k != "__n"})
    return out


def fedavg(updates: dict[int, tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    total = sum(n for n, _ in updates.values())
    keys = next(iter(updates.values()))[1]
    return {k: sum(n / total * u[k].astype(np.float64) for n, u in updates.values()) for k in keys}


def error_bound(cfg: RunConfig, weights: list[int]) -> float:
    data = task_for(config_to_json(cfg)).data
    max_weight = max(len(data.partition(p)[0]) for p in range(cfg.num_terminals))
    return quantization_error_bound(SecAggSettings(threshold=3, max_weight=max_weight), weights)


def check_scenario(cfg: RunConfig, session: RunSession, spy: SpyGrid, truth_dir: Path) -> None:
    """The assertions of the module docstring for a 2-round run where terminal 3 drops in round 2."""
    assert session.error is None and len(session.ledger.rounds) == 2
    uploads = spy.masked_uploads()
    assert len(uploads) == 4 + 3  # round 2: terminal 3 never answered its masked upload
    for sent, reply in uploads:  # the server never holds an unmasked update
        key = (int(sent.metadata.group_id), int(reply.content.metric_records["metrics"]["partition-id"]))
        assert set(reply.content.array_records) == {MASKED_KEY}, key
        masked = {k: v.numpy() for k, v in reply.content.array_records[MASKED_KEY].items()}
        n, update = truths(truth_dir, key[0])[key[1]]
        sent_n = masked.pop(WEIGHT_KEY)
        assert sent_n.dtype == np.uint32 and int(sent_n[0]) != n
        flat_masked = np.concatenate([masked[k].ravel() for k in update]).astype(np.float64)
        flat_true = np.concatenate([update[k].ravel() for k in update]).astype(np.float64)
        assert abs(np.corrcoef(flat_masked, flat_true)[0, 1]) < 0.1, key  # uniform masks: no trace of the update
        assert np.mean(flat_masked > 2**31) == pytest.approx(0.5, abs=0.05)  # spread over the whole modulus
    # Round 1, every terminal: the global model sent in round 2 is FedAvg of the true updates.
    round1 = truths(truth_dir, 1)
    assert sorted(round1) == [0, 1, 2, 3]
    sent2 = next(m for m, _ in uploads if m.metadata.group_id == "2").content.array_records["arrays"]
    expected, bound = fedavg(round1), error_bound(cfg, [n for n, _ in round1.values()])
    errors = [np.abs(sent2[k].numpy().astype(np.float64) - v).max() for k, v in expected.items()]
    assert max(errors) <= bound and bound < 1e-4, (max(errors), bound)
    # Round 2: terminal 3 dropped after sharing keys; its pairwise masks were removed.
    round2 = truths(truth_dir, 2)
    assert sorted(round2) == [0, 1, 2]
    final = session.final_state
    assert final is not None
    expected, bound = fedavg(round2), error_bound(cfg, [n for n, _ in round2.values()])
    errors = [np.abs(final[k].numpy().astype(np.float64) - v).max() for k, v in expected.items()]
    assert max(errors) <= bound, (max(errors), bound)
    unmask = [m for m, _ in spy.exchanges if m.metadata.message_type == "train.secagg_unmask" and m.metadata.group_id == "2"]
    assert len(unmask) == 3 and all(list(m.content.config_records[RECORD_KEY_CONFIGS][Key.DEAD_NODE_ID_LIST]) == [4] for m in unmask)
    # Ledger: the dropped terminal's masked upload failed, the round kept 3; stages are rows.
    rows2 = session.ledger.rows_of(2)
    (dropped,) = [r for r in rows2 if r.status != "ok"]
    assert (dropped.client_id, dropped.message_type, dropped.status) == (3, "train", "failed")
    assert session.ledger.rounds[2].metrics["secagg-dropped"] == 1.0
    for stage in ("train.secagg_setup", "train.secagg_share", "train.secagg_unmask"):
        rows = [r for r in session.ledger.rows if r.message_type == stage]
        assert len(rows) == 8 - (stage == "train.secagg_unmask") and all(r.bytes_up > 0 and r.bytes_down > 0 and r.flops > 0 and r.compute_s > 0 for r in rows)


# --- in-process: fedsplit's serial engine ----------------------------------------------------------
@pytest.fixture(scope="module")
def serial_run(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    torch.set_num_threads(1)
    truth_dir = tmp_path_factory.mktemp("secagg-truth")
    cfg = load_config(None, BASE + ["rounds=2"])
    session, spy = run_secagg(cfg, "serial", truth_dir, DROP_ROUND2)
    return cfg, session, spy, truth_dir


def test_server_holds_only_masked_updates_and_the_fedavg_sum(serial_run):
    check_scenario(*serial_run)


def test_secagg_overhead_is_in_the_ledger(serial_run):
    cfg, session, _, _ = serial_run
    for rnd, record in session.ledger.rounds.items():
        assert record.metrics["secagg-server-cpu-s"] > 0 and record.server_flops > 0
        assert record.metrics["secagg-cpu-s"] > 0  # the terminals' masking, averaged
    uploads = [r for r in session.ledger.rows if r.message_type == "train" and r.status == "ok"]
    params = sum(v.numel() for v in task_for(config_to_json(cfg)).initial_state().values())
    assert all(4 * params < r.bytes_up < 4 * params + 2048 for r in uploads)  # uint32 masked values: no bigger than fp32


def test_dropouts_beyond_the_threshold_fail_the_round_with_the_reason(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(None, BASE + ["rounds=1", "training.max_empty_rounds=1"])
    with pytest.raises(EmptyRoundsError, match=r"secure aggregation failed after the masked upload: .*fewer than the threshold 3"):
        run_secagg(cfg, "serial", tmp_path, {1: {2, 3}})


def test_neighbour_graph_and_survivor_rules():
    complete = neighbour_graph([1, 2, 3, 4], 4, [0, 1, 0])
    assert all(nbrs == {1, 2, 3, 4} for nbrs in complete.values())
    ring = neighbour_graph(list(range(1, 8)), 3, [0, 1, 0])
    assert all(len(nbrs) == 3 and nid in nbrs for nid, nbrs in ring.items())
    assert ring == neighbour_graph(list(range(1, 8)), 3, [0, 1, 0]) != neighbour_graph(list(range(1, 8)), 3, [0, 2, 0])
    assert check_survivors("unmask", {1, 2, 3, 4}, {1, 2, 3}, complete, 3) is None
    assert check_survivors("unmask", {1, 2, 3, 4}, {1, 2}, complete, 3) == (
        "secure aggregation failed after unmask: 2 of 4 sampled terminals left, fewer than the threshold 3")
    assert check_survivors("setup", set(), set(), complete, 2) is not None  # nobody left is no success
    lonely = next(nid for nid in ring)  # SecAgg+: enough terminals left, but one has lost both neighbours
    alive = set(ring) - (ring[lonely] - {lonely})
    assert check_survivors("share keys", alive, alive, ring, 2) == (
        f"secure aggregation failed after share keys: terminal with secure id {lonely} has 1 surviving "
        "neighbour(s), fewer than the threshold 2 (2 of 7 sampled dropped out)")
    s = SecAggSettings()
    assert (s.shares_for(5), s.threshold_for(5), s.threshold_for(4), s.max_summands()) == (5, 3, 3, 1024)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy.name=krum"], "secagg.enabled with strategy.name = 'krum': secure aggregation hides the individual updates"),
        (["compression={uplink = 'topk', density = 0.1}"], "secagg.enabled with compression"),
        (["training.mode='splitfed-v1'"], "secagg.enabled with training.mode = 'splitfed-v1'"),
        (["defence.reject_factor=3"], "secagg.enabled with defence.reject_factor = 3.0"),
        (["privacy.mode='central'", "privacy.noise_multiplier=1"], "secagg.enabled with privacy.mode = 'central'"),
        (["secagg.threshold=5"], "secagg.threshold = 5: more than the 4 terminals"),
        (["secagg.threshold=1"], "secagg.threshold = 1: 0 (a majority of the shares) or >= 2"),
        (["secagg.num_shares=2"], "secagg.num_shares = 2: 0 (every sampled terminal) or >= 3"),
        (["secagg.quantization_range=4294967296"], "secagg.quantization_range = 4294967296: must be in (0, modulus_range"),
        (["secagg.enabled=false", "secagg.threshold=3"], "secagg.threshold = 3: has no effect with secagg.enabled = false"),
    ],
)
def test_incompatible_configurations_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, BASE + overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


# --- end to end: fedsplit's Ray engine and Flower's simulation engine ------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fedsplit", "flower"])
def test_secagg_end_to_end(engine, tmp_path, ray_session):
    cfg = load_config(None, BASE + ["rounds=2", f"engine.name={engine}", "engine.num_cpus=2"])
    session, spy = run_secagg(cfg, engine, tmp_path, DROP_ROUND2)
    check_scenario(cfg, session, spy, tmp_path)
