"""Local DP-SGD on split learning's terminal part(s) (issue #13 item 1).

Core: a DP step from the gradient the server returns at the cut equals per-sample clipping of the
unsplit model's per-sample gradients (noise 0), jointly over a U-shape's front and head; an empty
Poisson batch is a seeded noise-only step; batches are Opacus's Poisson samples. End to end: the
ledger's epsilon of each terminal grows every round and equals Opacus's offline accountant for
the same sampling rate, noise and steps; a terminal refuses a round past its budget.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from opacus.accountants import RDPAccountant
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from fedsplit.clients.app import make_client_app
from fedsplit.clients.privacy_mod import ACCOUNTANT_STATE_KEY, PRIVACY_BUDGET_CODE, store_accountant
from fedsplit.config import load_config
from fedsplit.learning import config_to_json, task_for
from fedsplit.models import build_model
from fedsplit.models.opacus_compat import opacus_compatible
from fedsplit.privacy import accountant as acc
from fedsplit.privacy.dp_sgd import PoissonSchedule
from fedsplit.privacy.split_dp import DPTerm, dp_step, poisson_batch
from fedsplit.simulation.engine import EngineGrid, SerialEngine
from fedsplit.simulation.server_app import RunSession, run_server
from fedsplit.split import (
    client_forward,
    client_head_step,
    server_backward_from_state,
    server_forward,
    server_step,
    split_model,
)

ALWAYS_ON = ["profiles={on = {base = 'laptop', availability = 1.0}}", "devices={on = 2}"]
DP = ["privacy.mode='local'", "privacy.noise_multiplier=1.1", "privacy.max_grad_norm=1.0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _clipped_sgd(model: nn.Module, params: list[str], x, y, clip: float, lr: float, expected: int) -> dict:  # noqa: ANN001
    """Reference without Opacus: each sample's gradient of the unsplit model's loss w.r.t. ``params``,
    clipped to ``clip`` (L2 over all of them), summed, divided by ``expected``, one SGD step."""
    named = dict(model.named_parameters())
    total = {k: torch.zeros_like(named[k]) for k in params}
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norm = math.sqrt(sum(float((named[k].grad ** 2).sum()) for k in params))
        for k in params:
            total[k] += named[k].grad * min(1.0, clip / (norm + 1e-6))
    return {k: named[k].detach() - lr * total[k] / expected for k in params}


@pytest.mark.parametrize(("name", "cut"), [("mlp", "net.1"), ("cnn", "stages.0")])
def test_dp_step_from_the_cut_gradient_equals_per_sample_clipping(name, cut):
    model = opacus_compatible(build_model(name, (1, 8, 8), 10, seed=0), name)  # cnn: GroupNorm
    x, y = _batch()
    parts = split_model(model, cut)
    expected = _clipped_sgd(copy.deepcopy(model), list(parts.client.state_dict()), x, y, clip=0.05, lr=0.1, expected=5)
    sent = client_forward(parts.client, x, keep_graph=False).activations
    grad = server_step(parts.server, sent, y, None).grad_at_cut  # the server's gradient of the mean loss
    opt = torch.optim.SGD(parts.client.parameters(), lr=0.1)
    dp_step([DPTerm(parts.client, x, grad_output=grad)], opt, noise_multiplier=0.0, max_grad_norm=0.05, expected_batch_size=5, noise_seed=1)
    for key, value in parts.client.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-7, rtol=0), key
    assert not any(hasattr(p, "grad_sample") for p in parts.client.parameters())  # Opacus's hooks are gone
    assert all(not m._forward_hooks and not m._backward_hooks for m in parts.client.modules())


def test_ushape_dp_step_clips_front_and_head_together():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    x, y = _batch()
    parts = split_model(model, ("net.1", "net.2"))
    keys = ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"]
    expected = _clipped_sgd(copy.deepcopy(model), keys, x, y, clip=0.05, lr=0.1, expected=5)
    front = client_forward(parts.client_front, x, keep_graph=False)
    middle = server_forward(parts.server_middle, front.activations)
    head = client_head_step(parts.client_head, middle.activations, y, None)  # no step: DP steps both below
    grad1 = server_backward_from_state(middle, head.grad_at_cut)
    opt = torch.optim.SGD([*parts.client_front.parameters(), *parts.client_head.parameters()], lr=0.1)
    terms = [DPTerm(parts.client_front, x, grad_output=grad1), DPTerm(parts.client_head, middle.activations, labels=y)]
    dp_step(terms, opt, noise_multiplier=0.0, max_grad_norm=0.05, expected_batch_size=5, noise_seed=1)
    state = parts.state_dict()
    for key in keys:
        assert torch.allclose(state[key], expected[key], atol=1e-7, rtol=0), key


def test_an_empty_poisson_batch_is_a_seeded_noise_only_step():
    part = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    start = copy.deepcopy(part.state_dict())

    def step(seed: int) -> dict:
        part.load_state_dict(start)
        opt = torch.optim.SGD(part.parameters(), lr=1.0)
        dp_step([DPTerm(part, torch.zeros(0, 1, 8, 8))], opt, noise_multiplier=2.0, max_grad_norm=0.5, expected_batch_size=4, noise_seed=seed)
        return {k: v.clone() for k, v in part.state_dict().items()}

    a, b, c = step(3), step(3), step(4)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["1.weight"], c["1.weight"])
    moved = (a["1.weight"] - start["1.weight"]).flatten()
    assert moved.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.1)  # lr * sigma * C / expected batch


def test_poisson_batches_are_opacus_samples():
    n, q = 500, 1 / 16
    g = torch.Generator().manual_seed(7)
    opacus_first = next(iter(UniformWithReplacementSampler(num_samples=n, sample_rate=q, generator=g)))
    assert poisson_batch(n, q, 7).tolist() == list(opacus_first)
    sizes = [len(poisson_batch(n, q, s)) for s in range(200)]
    assert 0 in [len(poisson_batch(20, 0.05, s)) for s in range(50)]  # empty batches happen
    assert abs(sum(sizes) / len(sizes) - n * q) < 2 and max(sizes) > n * q  # vary around n q, above it too


def _offline(noise: float, rate: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(noise, rate, steps)]
    return accountant.get_epsilon(delta=delta)


def _run(overrides: list[str]) -> tuple[RunSession, SerialEngine]:
    cfg = load_config(None, ALWAYS_ON + ["model.name=mlp", "train.local_epochs=1", "progress=false", "rounds=2"] + overrides)
    session = RunSession.from_config(cfg)
    engine = SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)
    run_server(EngineGrid(engine), session)
    return session, engine


@pytest.mark.parametrize("mode", ["splitfed-v1", "sl-ushape"])
def test_split_dp_epsilon_grows_and_equals_opacus_offline(mode):
    """2 rounds, 2 terminals, mlp (auto cut: net.1; U-shape net.1,net.2: front and head private;
    named, since auto refuses the MLP's only U-shape with a trained front: a ReLU as the middle)."""
    cut = ["split.cut=net.1,net.2"] if mode == "sl-ushape" else []
    session, engine = _run([f"training.mode={mode}", *cut, *DP])
    cfg = session.cfg
    task = task_for(config_to_json(cfg))
    train = [r for r in session.ledger.rows if r.phase == "train"]
    assert train and all(r.status == "ok" for r in train)
    for pid in (0, 1):
        schedule = PoissonSchedule.of(len(task.data.partition(pid)[0]), cfg.train.batch_size)
        released = sorted((r for r in train if r.client_id == pid and r.dp_epsilon > 0), key=lambda r: r.round)
        assert [r.round for r in released] == [1, 2]  # the reply with the trained part(s), each round
        assert released[0].dp_epsilon < released[1].dp_epsilon
        for rounds, row in enumerate(released, start=1):
            expected = _offline(1.1, schedule.sample_rate, rounds * schedule.steps_per_epoch, cfg.privacy.delta)
            assert row.dp_epsilon == pytest.approx(expected, rel=1e-9)
        state = engine.contexts[engine.node_id_of(pid)].state.config_records[ACCOUNTANT_STATE_KEY]
        assert sum(state["steps"]) == 2 * schedule.steps_per_epoch  # empty batches count: noise-only steps
    initial = task.initial_state()
    assert not torch.equal(session.final_state["net.1.weight"], initial["net.1.weight"])  # the private part trained
    assert session.ledger.rounds[2].metrics["accuracy"] > 0.3  # noisy, but learning (chance: 0.1)
    rounds = session.ledger.rounds
    assert 0 < rounds[1].metrics["dp-epsilon"] < rounds[2].metrics["dp-epsilon"]  # rounds.csv: the terminals' mean


def test_a_split_terminal_at_its_budget_refuses_the_round(task_identity):
    from fedsplit.clients.split_privacy import SplitPrivacy

    cfg = load_config(None, ALWAYS_ON + ["model.name=mlp", "training.mode=sl-vanilla", "privacy.mode='local'", "privacy.noise_multiplier=1.0", "privacy.epsilon=2.6"])
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    n = len(task_for(config_to_json(cfg)).data.partition(0)[0])
    msg = Message(RecordDict(), dst_node_id=7, message_type="train.split")
    privacy = SplitPrivacy(cfg, ctx, n, cfg.train.batch_size, 1, round_seed=0)
    assert privacy.refusal(msg) is None  # 647 samples, 21 steps at q = 1/21: epsilon 2.42, under 2.6
    store_accountant(ctx, privacy.plan.after(acc.empty_state("rdp")))
    refusal = SplitPrivacy(cfg, ctx, n, cfg.train.batch_size, 1, round_seed=1).refusal(msg)  # a second: 2.89
    assert refusal is not None and refusal.error.code == PRIVACY_BUDGET_CODE
    assert refusal.error.reason.startswith("privacy budget spent") and "privacy.epsilon = 2.6" in refusal.error.reason


@pytest.mark.parametrize("mode", ["sl-vanilla", "sl-ushape", "splitfed-v1", "splitfed-v2"])
def test_local_dp_is_accepted_in_every_split_mode(mode):
    cfg = load_config(None, ALWAYS_ON + [f"training.mode={mode}", "privacy.mode='local'", "privacy.epsilon=8"])
    assert cfg.privacy.mode == "local" and cfg.training.mode == mode
