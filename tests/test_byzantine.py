"""Byzantine terminals: seeded attackers, the attacks' maths, the attack mod on real Flower
messages, the norm defence around a real Flower strategy, and a run whose poisoned updates the
ledger shows as rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedsplit.clients.app import make_client_app
from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.clients.attack_mod import make_attack_mod
from fedsplit.clients.privacy_mod import local_trainer
from fedsplit.config import ConfigError, load_config
from fedsplit.learning import config_to_json, task_for, train_local
from fedsplit.privacy.attacks import attacker_ids, flip_labels, num_attackers, poison_update
from fedsplit.privacy.norms import update_norm
from fedsplit.simulation.engine import EngineGrid, SerialEngine
from fedsplit.simulation.server_app import RunSession, run_server
from fedsplit.strategies.robust import NormDefenceStrategy

POPULATION = ["profiles={on = {base = 'laptop', availability = 1.0}}", "devices={on = 10}"]


def test_attackers_are_a_seeded_fraction():
    assert num_attackers(10, 0.2) == 2 and num_attackers(10, 0.25) == 3 and num_attackers(10, 0.04) == 0
    chosen = attacker_ids(20, 0.2, seed=3)
    assert len(chosen) == 4 and chosen == attacker_ids(20, 0.2, seed=3) and all(0 <= i < 20 for i in chosen)
    assert len({attacker_ids(20, 0.2, seed=s) for s in range(5)}) > 1


def test_update_attacks():
    received = {"w": np.array([1.0, 2.0], dtype=np.float32), "steps": np.array(3)}
    local = {"w": np.array([1.5, 1.0], dtype=np.float32), "steps": np.array(7)}
    flipped = poison_update(received, local, "signflip", k=5)
    np.testing.assert_allclose(flipped["w"], [1.0 - 5 * 0.5, 2.0 + 5 * 1.0])
    assert flipped["w"].dtype == np.float32 and flipped["steps"] == 7  # integer buffers are sent as trained
    np.testing.assert_allclose(poison_update(received, local, "scale", k=3)["w"], [2.5, -1.0])
    big = {"w": np.zeros(20000, dtype=np.float32)}
    noisy = poison_update(big, big, "noise", noise_std=0.5, rng=np.random.default_rng(0))["w"]
    assert abs(noisy.std() - 0.5) < 0.01 and abs(noisy.mean()) < 0.01
    with pytest.raises(ValueError, match="not an update attack"):
        poison_update(received, local, "labelflip")
    assert torch.equal(flip_labels(torch.tensor([0, 3, 9]), 10), torch.tensor([9, 6, 0]))


def _message(arrays: dict[str, np.ndarray], node: int, server_round: int = 1) -> Message:
    content = RecordDict({"arrays": array_record_from_state(arrays), "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=node, message_type="train")


def _context(pid: int) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid}, state=RecordDict(), run_config={})


def test_attack_mod_poisons_only_the_attackers_replies(task_identity):
    cfg = load_config(None, POPULATION + ["attack.kind='signflip'", "attack.k=5", "attack.fraction=0.2"])
    mod = make_attack_mod(config_to_json(cfg))
    attackers = attacker_ids(10, 0.2, cfg.seed)
    honest = min(set(range(10)) - attackers)
    received = {"w": np.zeros(3, dtype=np.float32)}
    trained = {"w": np.array([0.1, -0.2, 0.3], dtype=np.float32)}

    def app(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict({"arrays": array_record_from_state(trained), "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

    for pid in sorted(attackers) + [honest]:
        reply = mod(_message(received, 100 + pid), _context(pid), app)
        sent = record_views(reply.content["arrays"])["w"]
        expected = -5 * trained["w"] if pid in attackers else trained["w"]
        np.testing.assert_allclose(sent, expected, rtol=1e-6)
        assert set(reply.content.metric_records["metrics"]) == {"num-examples"}  # nothing gives the attacker away
    evaluate = Message(RecordDict({"arrays": array_record_from_state(received)}), dst_node_id=100, message_type="evaluate")
    assert mod(evaluate, _context(min(attackers)), app).content["arrays"]["w"].numpy().tolist() == trained["w"].tolist()


def test_labelflip_attackers_train_on_flipped_labels():
    cfg = load_config(None, POPULATION + ["model.name=mlp", "attack.kind='labelflip'", "attack.fraction=0.2"])
    task = task_for(config_to_json(cfg))
    attacker = min(attacker_ids(10, 0.2, cfg.seed))
    honest = min(set(range(10)) - attacker_ids(10, 0.2, cfg.seed))
    assert local_trainer(task, honest, _context(honest)) is train_local
    data = task.data.partition(attacker)[0]
    kwargs = dict(epochs=1, batch_size=32, lr=0.05, seed=1)
    task.model.load_state_dict(task.initial_state())
    poisoned = local_trainer(task, attacker, _context(attacker))(task.model, data.x, data.y, **kwargs)
    task.model.load_state_dict(task.initial_state())
    direct = train_local(task.model, data.x, flip_labels(data.y, 10), **kwargs)
    task.model.load_state_dict(task.initial_state())
    honest_run = train_local(task.model, data.x, data.y, **kwargs)
    assert poisoned.loss == direct.loss != honest_run.loss


class _Grid:
    """The two Grid calls FedAvg's configure_train makes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)


def test_norm_defence_rejects_and_clips_before_fedavg(task_identity):
    sent = {"w": np.zeros(4, dtype=np.float32)}
    rejected = []
    strategy = NormDefenceStrategy(
        FedAvg(fraction_evaluate=0.0), clip_factor=1.0, reject_factor=3.0, on_reject=lambda r, n, why: rejected.append((r, n, why))
    )
    messages = list(strategy.configure_train(1, array_record_from_state(sent), ConfigRecord(), _Grid([1, 2, 3, 4])))
    assert len(messages) == 4
    # Updates of norm 2 * |scale| (4 values): 0.2, 0.4, 0.6 honest; 20 is an attacker's.
    replies = [Message(RecordDict({"arrays": array_record_from_state({"w": sent["w"] + s}), "metrics": MetricRecord({"num-examples": 10})}), reply_to=m)
               for m, s in zip(messages, (0.1, 0.2, 0.3, 10.0))]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert [(r, n) for r, n, _ in rejected] == [(1, messages[3].metadata.dst_node_id)]
    assert rejected[0][2].startswith("update norm 20 >") and "defence.reject_factor = 3 x median" in rejected[0][2]
    # Kept: 0.2, 0.4, 0.6; median 0.4 -> 0.6 clipped to 0.4 (scale 0.2); FedAvg of 0.1, 0.2, 0.2.
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, (0.1 + 0.2 + 0.2) / 3), rtol=1e-6)
    assert metrics["fedsplit.clipped"] == 1 and metrics["fedsplit.norm-rejected"] == 1
    assert update_norm(sent, {"w": sent["w"] + 0.3}) == pytest.approx(0.6)


def test_signflip_attackers_are_rejected_in_the_ledger():
    torch.set_num_threads(1)
    cfg = load_config(None, POPULATION + [
        "model.name=mlp", "train.local_epochs=1", "rounds=2", "progress=false",
        "attack.kind='signflip'", "attack.fraction=0.2", "defence.reject_factor=3",
    ])
    session = RunSession.from_config(cfg)
    run_server(EngineGrid(SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)), session)
    rows = [r for r in session.ledger.rows if r.phase == "train"]
    rejected = {(r.round, r.client_id) for r in rows if r.status == "rejected"}
    attackers = attacker_ids(10, 0.2, cfg.seed)
    assert rejected == {(rnd, pid) for rnd in (1, 2) for pid in attackers}
    assert all(r.reason.startswith("update norm") for r in rows if r.status == "rejected")
    assert session.ledger.rounds[2].rejected == 2 and session.ledger.rounds[2].aggregated == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack.kind='signflip'", "attack.fraction=0.04"], "no attacker among 10 terminals"),
        (["attack.kind='scale'", "training.mode=sl-vanilla"], "attacks act on whole-model updates"),
        (["defence.clip_norm=1", "defence.clip_factor=2"], "set one of them"),
        (["defence.reject_factor=0.5"], "must be >= 1"),
        (["defence.reject_norm=3", "training.mode=fedbuff"], "wraps the strategy of training.mode = 'fl'"),
        (["attack.kind='mimic'"], "attack.kind = 'mimic': unknown"),
    ],
)
def test_attack_and_defence_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, POPULATION + overrides)


@pytest.mark.slow
def test_byzantine_experiment_smoke(tmp_path, capsys):
    import csv
    import importlib.util
    import re

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("byzantine_experiment", REPO / "experiments" / "byzantine.py")
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    assert experiment.main(["--smoke", "--out", str(tmp_path)]) == 0  # a failed check is exit status 1
    out = capsys.readouterr().out
    cells = {(m[1], m[2]): (float(m[3]), int(m[4])) for m in re.finditer(r"^attack=(\S+) defence=(\S+) final_acc=([\d.]+) rejected=(\d+)$", out, re.M)}
    assert set(cells) == {(a, d) for a in ("none", "signflip") for d in ("fedavg", "fedmedian", "normreject")}
    assert cells[("signflip", "normreject")][1] == 2 * 2  # both attackers rejected in both rounds
    assert cells[("none", "normreject")][1] == 0
    assert cells[("signflip", "fedavg")][0] < cells[("none", "fedavg")][0] - 0.3  # the attack bites
    assert re.search(r"^check fedavg_drop .*: PASS \(", out, re.M), out  # holds at any size: counts
    assert re.search(r"^check best_defence .*: SKIP \(smoke: ", out, re.M), out  # needs the full 20 rounds
    with open(tmp_path / "byzantine.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert (tmp_path / "byzantine.png").stat().st_size > 10_000
