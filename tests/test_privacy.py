"""Differential privacy: local DP-SGD with a cumulative per-terminal accountant, central DP's epsilon.

The acceptance test (issue #13): a local-DP run's ledger holds each terminal's cumulative epsilon
per round; it grows with the rounds and equals Opacus's own accountant computed offline for the
same sampling rate, noise and number of steps.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedsplit.clients.app import make_client_app
from fedsplit.clients.arrays import array_record_from_state
from fedsplit.clients.privacy_mod import (
    ACCOUNTANT_STATE_KEY,
    PRIVACY_BUDGET_CODE,
    load_accountant,
    make_privacy_mod,
    store_accountant,
)
from fedsplit.config import ConfigError, load_config
from fedsplit.learning import Task, config_to_json, task_for
from fedsplit.privacy import accountant as acc
from fedsplit.privacy.central import central_epsilon
from fedsplit.privacy.dp_sgd import PoissonSchedule, dp_step_flops, planned_noise
from fedsplit.privacy.report import privacy_extra
from fedsplit.simulation.engine import EngineGrid, SerialEngine
from fedsplit.simulation.server_app import RunSession, run_server

# Terminals that are always online, so each trains every round (the offline expectation is simple).
ALWAYS_ON = ["profiles={on = {base = 'laptop', availability = 1.0}}", "devices={on = 3}"]
SMALL = ["model.name=mlp", "train.local_epochs=1", "progress=false"]


def _run(overrides: list[str]) -> tuple[RunSession, SerialEngine]:
    cfg = load_config(None, ALWAYS_ON + SMALL + overrides)
    session = RunSession.from_config(cfg)
    engine = SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)
    run_server(EngineGrid(engine), session)
    return session, engine


def _offline_epsilon(noise: float, sample_rate: float, steps: int, delta: float, mechanism: str = "rdp") -> float:
    accountant = RDPAccountant() if mechanism == "rdp" else PRVAccountant()
    accountant.history = [(noise, sample_rate, steps)]
    return accountant.get_epsilon(delta=delta)


@pytest.fixture(scope="module")
def local_dp_run():
    torch.set_num_threads(1)
    return _run(["rounds=3", "privacy.mode='local'", "privacy.noise_multiplier=1.1", "privacy.max_grad_norm=1.0"])


def _check_cumulative_epsilon(session: RunSession, rounds: int, noise: float) -> dict[int, int]:
    """Every terminal's ledger epsilon grows each round and equals Opacus's offline accountant for
    the steps it took so far; returns each terminal's steps per round."""
    cfg = session.cfg
    task = task_for(config_to_json(cfg))
    train = [r for r in session.ledger.rows if r.phase == "train"]
    assert len(train) == 3 * rounds and all(r.status == "ok" for r in train)
    steps = {}
    for pid in range(3):
        n = len(task.data.partition(pid)[0])
        batches = math.ceil(n / cfg.train.batch_size)  # Opacus: sample rate 1 / batches, batches steps an epoch
        rows = sorted((r for r in train if r.client_id == pid), key=lambda r: r.round)
        epsilons = [r.dp_epsilon for r in rows]
        assert epsilons == sorted(epsilons) and len(set(epsilons)) == rounds, epsilons  # grows every round
        for trained_rounds, row in enumerate(rows, start=1):
            expected = _offline_epsilon(noise, 1 / batches, trained_rounds * batches, cfg.privacy.delta)
            assert row.dp_epsilon == pytest.approx(expected, rel=1e-9)
        steps[pid] = batches
    return steps


@pytest.mark.slow
def test_local_dp_epsilon_is_cumulative_and_equals_opacus_offline(local_dp_run):
    session, engine = local_dp_run
    cfg = session.cfg
    train = [r for r in session.ledger.rows if r.phase == "train"]
    for pid, batches in _check_cumulative_epsilon(session, 3, 1.1).items():
        # The accountant lives in the terminal's Context.state (a ConfigRecord), across rounds.
        state = engine.contexts[engine.node_id_of(pid)].state.config_records[ACCOUNTANT_STATE_KEY]
        assert sum(state["steps"]) == 3 * batches and state["mechanism"] == "rdp"
    report = privacy_extra(cfg, session.strategy, session.ledger)["privacy"]
    assert report["mode"] == "local" and report["max_epsilon"] == max(r.dp_epsilon for r in train)
    assert set(report["epsilon_by_terminal"]) == {"0", "1", "2"}
    rounds = session.ledger.rounds
    assert rounds[1].metrics["dp-epsilon"] < rounds[3].metrics["dp-epsilon"]


@pytest.mark.slow
def test_local_dp_epsilon_accumulates_on_the_flower_engine(tmp_path, ray_session):
    """Flower's own simulation engine keeps each terminal's Context.state too: same cumulative epsilon."""
    from fedsplit.simulation.runner import simulate

    cfg = load_config(None, ALWAYS_ON + SMALL + [
        "rounds=2", "engine.name=flower", f"out_dir={tmp_path}", "privacy.mode='local'", "privacy.noise_multiplier=1.1",
    ])
    outcome = simulate(cfg, write=False)
    _check_cumulative_epsilon(outcome.session, 2, 1.1)


@pytest.mark.slow
def test_dp_model_is_trained_and_matches_the_server_architecture(local_dp_run):
    session, _ = local_dp_run
    final = session.final_state
    initial = task_for(config_to_json(session.cfg)).initial_state()
    assert final.keys() == initial.keys()
    assert any(not torch.equal(final[k], initial[k]) for k in final)
    assert session.ledger.rounds[3].metrics["accuracy"] > 0.2  # noisy, but learning (chance: 0.1)


def test_opacus_compatible_model_on_both_sides(caplog):
    cfg = load_config(None, ALWAYS_ON + ["model.name=cnn", "privacy.mode='local'", "privacy.noise_multiplier=1.0"])
    with caplog.at_level(logging.INFO, logger="fedsplit"):
        server, client = Task.from_config(cfg), Task.from_config(cfg)  # the server's and a terminal's build
    assert "made Opacus-compatible" in caplog.text and "BatchNorm2d -> GroupNorm" in caplog.text
    for task in (server, client):
        kinds = {type(m).__name__ for m in task.model.modules()}
        assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    assert {k: v.shape for k, v in server.initial.items()} == {k: v.shape for k, v in client.initial.items()}
    assert all(torch.equal(server.initial[k], client.initial[k]) for k in server.initial)
    plain = Task.from_config(load_config(None, ALWAYS_ON + ["model.name=cnn"]))
    assert any("BatchNorm" in type(m).__name__ for m in plain.model.modules())  # only DP runs change the model


def _train_message(node_config_pid: int) -> tuple[Message, Context]:
    content = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({"server-round": 2, "local-epochs": 1, "batch-size": 32})})
    msg = Message(content, dst_node_id=7, message_type="train")
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": node_config_pid}, state=RecordDict(), run_config={})
    return msg, ctx


def test_a_terminal_at_its_budget_refuses_to_train(task_identity):
    cfg = load_config(None, ALWAYS_ON + SMALL + ["privacy.mode='local'", "privacy.noise_multiplier=1.0", "privacy.epsilon=3.0"])
    config_json = config_to_json(cfg)
    n = len(task_for(config_json).data.partition(0)[0])
    schedule = PoissonSchedule.of(n, cfg.train.batch_size)
    msg, ctx = _train_message(0)
    calls = []

    def app(m: Message, c: Context) -> Message:
        calls.append(m)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": n})}), reply_to=m)

    mod = make_privacy_mod(config_json)
    # One round spends ~2.9 (under 3): it trains. A second would reach ~3.6: it refuses, untrained.
    store_accountant(ctx, acc.empty_state("rdp"))
    first = mod(msg, ctx, app)
    assert not first.has_error() and len(calls) == 1
    store_accountant(ctx, acc.with_steps(acc.empty_state("rdp"), 1.0, schedule.sample_rate, schedule.steps_per_epoch))
    second = mod(msg, ctx, app)
    assert second.has_error() and second.error.code == PRIVACY_BUDGET_CODE
    assert second.error.reason.startswith("privacy budget spent") and "privacy.epsilon = 3" in second.error.reason
    assert len(calls) == 1


def test_client_side_clipping_runs_flowers_mod(task_identity):
    cfg = load_config(None, ALWAYS_ON + SMALL + ["privacy.mode='central'", "privacy.noise_multiplier=1.0", "privacy.clipping='client-fixed'"])
    sent = {"w": np.zeros(4, dtype=np.float32)}
    msg = Message(RecordDict({"arrays": array_record_from_state(sent), "config": ConfigRecord({"clipping_norm": 0.5})}), dst_node_id=7, message_type="train")
    _, ctx = _train_message(0)

    def app(m: Message, c: Context) -> Message:  # an update of norm 2
        return Message(RecordDict({"arrays": array_record_from_state({"w": np.ones(4, dtype=np.float32)}), "metrics": MetricRecord({"num-examples": 3})}), reply_to=m)

    reply = make_privacy_mod(config_to_json(cfg))(msg, ctx, app)
    np.testing.assert_allclose(reply.content["arrays"]["w"].numpy(), np.full(4, 0.25), rtol=1e-6)  # clipped to norm 0.5


def test_accountant_state_survives_context_round_trip(task_identity):
    _, ctx = _train_message(0)
    state = acc.with_steps(acc.with_steps(acc.empty_state("rdp"), 1.2, 0.2, 10), 0.9, 0.25, 4)
    store_accountant(ctx, state)
    assert isinstance(ctx.state[ACCOUNTANT_STATE_KEY], ConfigRecord)
    assert load_accountant(ctx, "rdp") == state
    for mechanism, opacus in (("rdp", RDPAccountant()), ("prv", PRVAccountant())):
        opacus.history = [(1.2, 0.2, 10), (0.9, 0.25, 4)]
        assert acc.epsilon({**state, "mechanism": mechanism}, 1e-5) == pytest.approx(opacus.get_epsilon(delta=1e-5), rel=1e-9)
    with pytest.raises(ValueError, match="accountant is 'rdp'"):
        load_accountant(ctx, "prv")


def test_planned_noise_spends_the_budget_over_the_run():
    n, batch, epochs, rounds = 150, 32, 2, 10
    noise = planned_noise(4.0, 1e-5, n, batch, epochs, rounds)
    schedule = PoissonSchedule.of(n, batch)
    spent = _offline_epsilon(noise, schedule.sample_rate, rounds * epochs * schedule.steps_per_epoch, 1e-5)
    assert 3.95 <= spent <= 4.0  # Opacus's search stops within 0.01 below the target


def test_poisson_schedule_follows_opacus_arithmetic():
    assert PoissonSchedule.of(160, 32) == PoissonSchedule(5, 0.2)
    assert PoissonSchedule.of(93 * 10, 10).steps_per_epoch == 92  # Opacus's int(1 / (1 / 93))
    assert PoissonSchedule.of(0, 32) == PoissonSchedule(1, 1.0)  # a terminal without data: no division by zero


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_dp_step_flops_equal_a_direct_count():
    from opacus import GradSampleModule

    model = Task.from_config(load_config(None, ALWAYS_ON + ["model.name=mlp"])).model
    probe = GradSampleModule(model)
    counter = FlopCounterMode(display=False)
    with counter:
        nn.functional.cross_entropy(probe(torch.zeros(7, 1, 8, 8)), torch.zeros(7, dtype=torch.long)).backward()
    probe._close()
    assert dp_step_flops(model, (1, 8, 8), 7) == counter.get_total_flops() > 0
    assert dp_step_flops(model, (1, 8, 8), 0) == 0


@pytest.mark.parametrize(
    ("clipping", "wrapper"),
    [
        ("server-fixed", "DifferentialPrivacyServerSideFixedClipping"),
        ("client-fixed", "DifferentialPrivacyClientSideFixedClipping"),
        ("server-adaptive", "DifferentialPrivacyServerSideAdaptiveClipping"),
        ("client-adaptive", "DifferentialPrivacyClientSideAdaptiveClipping"),
    ],
)
def test_central_dp_run_reports_its_epsilon(clipping, wrapper):
    session, _ = _run([
        "rounds=2", "privacy.mode='central'", "privacy.noise_multiplier=0.8", "privacy.max_grad_norm=2.0",
        f"privacy.clipping='{clipping}'", "privacy.clipped_count_stddev=1.0",
    ])
    report = privacy_extra(session.cfg, session.strategy, session.ledger)["privacy"]
    assert report["wrapper"] == wrapper and report["releases"] == 2
    assert report["epsilon"] == pytest.approx(_offline_epsilon(0.8, 1.0, 2, 1e-5), rel=1e-12)
    assert report["epsilon"] == pytest.approx(central_epsilon(0.8, 2, 1e-5))
    assert session.ledger.rounds[1].metrics["dp-epsilon"] < session.ledger.rounds[2].metrics["dp-epsilon"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.noise_multiplier=1.0"], "privacy.noise_multiplier = 1.0: has no effect with privacy.mode = 'off'"),
        (["privacy.mode='local'"], "needs privacy.noise_multiplier > 0 or a budget privacy.epsilon > 0"),
        (["privacy.mode='central'", "privacy.epsilon=1", "training.mode=sl-vanilla"], "Flower's DP wrappers need training.mode = 'fl'"),
        (["privacy.mode='local'", "privacy.epsilon=1", "strategy.name=fedprox"], "proximal term"),
        (["privacy.mode='central'", "privacy.epsilon=1", "training.mode=gossip"], "Flower's DP wrappers need training.mode = 'fl'"),
        (["privacy.mode='everywhere'"], "privacy.mode = 'everywhere': unknown"),
        (["privacy.delta=1.5"], "privacy.delta"),
    ],
)
def test_privacy_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config(None, overrides)
