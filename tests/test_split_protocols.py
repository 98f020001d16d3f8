"""Split learning over Flower messages: exactness, labels that stay home, bad input, bytes, engines.

The protocol and the real ClientApp exchange real Flower messages through the metered Grid; the
exactness and privacy tests use an in-process engine (no Ray), the last test both real engines.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedsplit.clients.app import _round_seed, make_client_app
from fedsplit.clients.split_client import batch_indices
from fedsplit.config import load_config
from fedsplit.devices import Population, builtin_profiles
from fedsplit.learning import config_to_json, task_for
from fedsplit.ledger import Ledger
from fedsplit.simulation.engine import EngineGrid
from fedsplit.simulation.loop import LoopSettings, run_protocol
from fedsplit.simulation.metered_grid import MeteredGrid
from fedsplit.simulation.server_app import build_protocol, train_config
from fedsplit.split import profile_split
from fedsplit.strategies.protocol import ProtocolRun
from tests.test_metered_grid import InProcessEngine

MODES = ["sl-vanilla", "sl-ushape", "splitfed-v1", "splitfed-v2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared machine (a 2-round
    MLP run: 1.1 s against 21 s with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
CUTS = {"sl-ushape": "features.2,classifier.2"}


def setup_run(overrides: list[str]):  # noqa: ANN201
    cfg = load_config(None, overrides)
    population = Population(cfg.devices, builtin_profiles())
    engine = InProcessEngine(make_client_app(config_json=config_to_json(cfg)), population)
    ledger = Ledger()
    grid = MeteredGrid(EngineGrid(engine), population, ledger, seed=cfg.seed, partition_of=engine.partition_of, emulate_availability=False)
    return cfg, grid, ledger


def run_split(overrides: list[str], rounds: int = 1):  # noqa: ANN201
    cfg, grid, ledger = setup_run(overrides)
    task = task_for(config_to_json(cfg))
    protocol = build_protocol(cfg, grid)
    run = ProtocolRun(grid=grid, num_rounds=rounds, initial_state=task.initial_state(), train_config=train_config(cfg))
    final = run_protocol(protocol, run, settings=LoopSettings(eval_every=0, max_empty_rounds=0))
    return cfg, task, ledger, final, grid


def centralized_step(cfg, task, state, pid: int):  # noqa: ANN001, ANN201
    """One SGD step of the unsplit model on terminal ``pid``'s first batch of round 1."""
    model = task.model
    model.load_state_dict(state)
    train = task.data.partition(pid)[0]
    idx = batch_indices(len(train), cfg.train.batch_size, 1, _round_seed(cfg.seed, pid, 1), 0)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay, foreach=True)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
    opt.step()
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())


def one_batch(mode: str, devices: str, model: str = "fedavg-cnn") -> list[str]:
    """Terminals of ~450 samples, a batch that holds them all: one round = one step."""
    return [
        f"training.mode={mode}",
        f"devices={devices}",
        f"model.name={model}",
        "train.batch_size=2048",
        "train.local_epochs=1",
        "train.weight_decay=0.001",
        f"split.cut={CUTS.get(mode, 'features.2')}",
    ]


def assert_close(a, b, tol: float = 1e-6) -> None:  # noqa: ANN001
    for key in b:
        assert torch.allclose(a[key].double(), b[key].double(), atol=tol, rtol=0), key


@pytest.mark.parametrize("mode", MODES)
def test_one_step_equals_the_centralized_step(mode):
    cfg, task, ledger, final, _ = run_split(one_batch(mode, "{laptop = 1}"))
    assert_close(final, centralized_step(cfg, task, task.initial_state(), 0))
    assert all(r.status == "ok" for r in ledger.rows)


def test_splitfed_v1_equals_the_average_of_centralized_steps_with_batchnorm():
    cfg, task, ledger, final, _ = run_split(one_batch("splitfed-v1", "{laptop = 2}", model="cnn") + ["split.cut=stages.0"])
    steps = [centralized_step(cfg, task, task.initial_state(), pid) for pid in (0, 1)]
    sizes = [len(task.data.partition(pid)[0]) for pid in (0, 1)]
    expected = OrderedDict()
    for key, ref in steps[0].items():
        avg = sum(s[key].double() * (n / sum(sizes)) for s, n in zip(steps, sizes))
        expected[key] = avg.to(ref.dtype) if ref.dtype.is_floating_point else avg.round().to(ref.dtype)
    assert_close(final, expected)


def test_ushape_never_sends_a_label(monkeypatch):
    cfg, grid, ledger = setup_run(["training.mode=sl-ushape", "devices={laptop = 2}", "model.name=fedavg-cnn", "train.batch_size=64", "split.cut=features.2,classifier.2"])
    task = task_for(config_to_json(cfg))
    labels = {pid: task.data.partition(pid)[0].y.numpy() for pid in (0, 1)}
    seen: list[tuple[str, np.ndarray]] = []
    inner_send = grid.inner.send_and_receive

    def spy(messages, **kwargs):  # noqa: ANN001, ANN003, ANN202
        messages = list(messages)
        replies = list(inner_send(messages, **kwargs))
        for msg in messages + replies:
            for rkey, record in msg.content.array_records.items():
                for key, array in record.items():
                    seen.append((f"{rkey}.{key}", array.numpy()))
        return replies

    monkeypatch.setattr(grid.inner, "send_and_receive", spy)
    run = ProtocolRun(grid=grid, num_rounds=1, initial_state=task.initial_state(), train_config=train_config(cfg))
    run_protocol(build_protocol(cfg, grid), run, settings=LoopSettings(eval_every=0))
    assert len(seen) > 20
    assert not any(name.startswith("labels") for name, _ in seen)
    assert not any(a.dtype.kind in "iu" for _, a in seen)  # weights, activations, gradients: floats only
    for y in labels.values():  # no batch of labels hides in a float array either
        for _, a in seen:
            assert not (a.ndim == 1 and len(a) <= 64 and np.array_equal(a, y[: len(a)].astype(a.dtype)))


def _nan(acts: np.ndarray) -> np.ndarray:
    acts = acts.copy()
    acts[0, 0, 0, 0] = np.nan
    return acts


POISONS = {
    "nan": (_nan, "contain NaN/Inf"),
    "shape": (lambda a: a[:, :, :-1], "activations of shape"),
    "dtype": (lambda a: a.astype(np.float64), "of dtype float64 (expected float32)"),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_bad_activations_are_rejected_and_the_server_part_is_untouched(monkeypatch, poison):
    import fedsplit.clients.split_client as split_client

    real = split_client.SplitTerminal.forward_reply
    mutate, reason = POISONS[poison]

    def poisoned(self, k, flops):  # noqa: ANN001, ANN202
        content = real(self, k, flops)
        if int(self.context.node_config["partition-id"]) == 1:
            acts = mutate(content.array_records["activations"]["cut"].numpy())
            content["activations"] = split_client.array_record_from_state({"cut": acts})
        return content

    monkeypatch.setattr(split_client.SplitTerminal, "forward_reply", poisoned)
    cfg, task, ledger, final, _ = run_split(one_batch("splitfed-v1", "{laptop = 2}"))
    bad = [r for r in ledger.rows if r.client_id == 1]
    assert bad[-1].status == "rejected" and reason in bad[-1].reason, bad[-1].reason
    # Terminal 1 left the round: the model is terminal 0's step alone.
    assert_close(final, centralized_step(cfg, task, task.initial_state(), 0))


def test_bytes_are_the_tensors_plus_a_fixed_framing():
    """Every exchange's bytes = tensor bytes (activations, labels, gradients, weights) + framing
    that depends only on the message kind (its keys and the arrays' ranks)."""
    cfg, task, ledger, final, _ = run_split(["training.mode=splitfed-v1", "devices={laptop = 2}", "model.name=fedavg-cnn", "train.batch_size=100", "train.local_epochs=1", "split.cut=features.2"])
    profile = profile_split(task.model, "features.2", tuple(task.data.input_shape), 100)
    client_bytes = profile.part("client").state_bytes
    rows = [r for r in ledger.rows if r.phase == "train"]
    per_terminal = {}
    for r in rows:
        per_terminal.setdefault(r.client_id, []).append(r)
    for pid, chain in per_terminal.items():
        n = len(task.data.partition(pid)[0])
        batches = [min(100, n - s) for s in range(0, n, 100)]
        assert len(chain) == len(batches) + 1  # begin + one step per batch
        act = profile.cuts[0].activation_bytes // 100  # per sample
        tensors_up = [b * act + 8 * b for b in batches] + [client_bytes]
        tensors_down = [client_bytes] + [b * act for b in batches]
        framing_up = [r.bytes_up - t for r, t in zip(chain, tensors_up)]
        framing_down = [r.bytes_down - t for r, t in zip(chain, tensors_down)]
        # the framing documented in strategies/split_protocol.py, for every exchange
        assert framing_up == [460] * len(batches) + [467]
        assert framing_down == [594] + [219] * len(batches)
    assert sum(r.bytes_up for r in rows) == sum(r.bytes_up for r in ledger.rows if r.phase == "train")


@pytest.mark.parametrize("engine", ["fedsplit", "flower"])
def test_splitfed_runs_end_to_end_on_both_engines(tmp_path, ray_session, engine):
    from tests.conftest import small_overrides
    from fedsplit.simulation.runner import simulate

    cfg = load_config(None, small_overrides(tmp_path, **{"engine.name": engine, "training.mode": "splitfed-v1", "model.name": "fedavg-cnn", "split.cut": "features.2"}))
    outcome = simulate(cfg)
    assert outcome.summary["final_metrics"]["accuracy"] > 0.5
    rows = outcome.session.ledger.rows
    assert {r.message_type for r in rows} == {"train.split"}
    assert max(r.seq for r in rows) > 5 and all(r.flops > 0 for r in rows)
    for record in outcome.session.ledger.rounds.values():
        assert record.server_flops > 0 and record.aggregated == 4


def test_splitfed_v2_trains_one_server_part_on_one_terminal_after_another():
    """Two terminals, one batch each: the server part steps on terminal 0's batch, then on
    terminal 1's; each terminal part steps once from the round's start; terminal parts averaged."""
    from dataclasses import replace as with_server

    from fedsplit.split import make_sgd, split_model, split_training_step

    cfg, task, ledger, final, _ = run_split(one_batch("splitfed-v2", "{laptop = 2}"))
    t = cfg.train
    start = task.initial_state()
    shared = split_model(task.model, "features.2")
    shared.load_state_dict(start)
    server_opt = make_sgd(shared.server, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    clients, sizes = [], []
    for pid in (0, 1):
        parts = with_server(split_model(task.model, "features.2"), server=shared.server)
        parts.client.load_state_dict({k: start[k] for k in parts.client.state_dict()})
        train = task.data.partition(pid)[0]
        idx = batch_indices(len(train), t.batch_size, 1, _round_seed(cfg.seed, pid, 1), 0)
        client_opt = make_sgd(parts.client, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        split_training_step(parts, {"client": client_opt, "server": server_opt}, train.x[idx], train.y[idx], recompute=True)
        clients.append({k: v.detach().clone() for k, v in parts.client.state_dict().items()})
        sizes.append(len(train))
    expected = OrderedDict((k, v.detach().clone()) for k, v in shared.state_dict().items())
    for key in clients[0]:
        expected[key] = sum(c[key].double() * (n / sum(sizes)) for c, n in zip(clients, sizes)).float()
    assert_close(final, expected)


def test_ushape_sends_no_gradient_to_a_frozen_front(monkeypatch):
    """transfer.trainable freezes the terminal's input-side part (features.0): the server sends no
    gradient at cut 1 (the ledger's downlink drops by exactly those tensors and their framing),
    the terminal runs no backward there, and the frozen part's weights stay as they were; the
    middle and the head still train (the gradient at cut 2 still travels)."""
    import fedsplit.clients.split_client as split_client
    from fedsplit.split import UShapeParts

    frozen = ["training.mode=sl-ushape", "devices={laptop = 2}", "model.name=fedavg-cnn", "train.batch_size=128",
              "split.cut=features.2,classifier.2", "transfer.trainable=classifier", "train.local_epochs=1"]

    def no_backward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a frozen front ran a backward")

    def run():  # noqa: ANN202 - the whole server loop, as a run has it (the frozen rest included)
        from fedsplit.simulation.engine import EngineGrid, SerialEngine
        from fedsplit.simulation.server_app import RunSession, run_server

        cfg = load_config(None, frozen + ["rounds=1", "progress=false"])
        session = RunSession.from_config(cfg)
        run_server(EngineGrid(SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)), session)
        return session.ledger, session.final_state

    with monkeypatch.context() as patch:
        patch.setattr(split_client, "client_backward_recompute", no_backward)
        ledger, final = run()
    # the same run as before the fix: the server believes the front trains and sends its gradient
    with monkeypatch.context() as patch:
        patch.setattr(UShapeParts, "cut_gradient_needed", property(lambda self: (True, True)))
        old_ledger, old_final = run()
    task = task_for(config_to_json(load_config(None, frozen)))
    start = task.full_state(task.initial_state())
    for key in ("features.0.weight", "features.0.bias"):
        assert torch.equal(final[key], start[key]) and torch.equal(old_final[key], start[key])
    for key in ("classifier.1.weight", "classifier.3.weight"):  # middle and head trained
        assert not torch.equal(final[key], start[key])
    assert_close(final, old_final, tol=0)  # the gradient the old run sent was never used
    assert all(r.status == "ok" for r in ledger.rows + old_ledger.rows)
    steps = 0
    grad_bytes = 0
    for pid in (0, 1):
        n = len(task.data.partition(pid)[0])
        batches = [min(128, n - s) for s in range(0, n, 128)]
        steps += len(batches)
        grad_bytes += sum(b * 32 * 4 * 4 * 4 for b in batches)  # 32 x 4 x 4 float32 at features.2 (8x8 digits)
    rows, old_rows = ([r for r in led.rows if r.phase == "train"] for led in (ledger, old_ledger))
    down, old_down = sum(r.bytes_down for r in rows), sum(r.bytes_down for r in old_rows)
    assert sum(r.bytes_up for r in rows) == sum(r.bytes_up for r in old_rows)
    framing = (old_down - down - grad_bytes) / steps  # the 'gradient' record's keys and array header
    assert old_down - down > grad_bytes and framing == int(framing) and 0 < framing < 300, (old_down, down, grad_bytes)


@pytest.mark.parametrize("mode", MODES)
def test_a_parameter_free_terminal_part_gets_no_gradient(monkeypatch, mode):
    """Regression (issue #12 item 2): a cut before the MLP's first layer with parameters (net.0,
    Flatten) made the server send a gradient that the terminal could not backward ("element 0 of
    tensors does not require grad", every exchange failed). Named explicitly, such a part gets no
    gradient and runs no backward, in every mode, and the round still equals the centralized step."""
    import fedsplit.clients.split_client as split_client

    def no_backward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a parameter-free part ran a backward")

    monkeypatch.setattr(split_client, "client_backward_recompute", no_backward)
    cut = "net.0,net.2" if mode == "sl-ushape" else "net.0"  # U-shape: the middle (net.1) still trains
    cfg, grid, ledger = setup_run(one_batch(mode, "{laptop = 1}", model="mlp")[:-1] + [f"split.cut={cut}"])
    sent: list[str] = []
    inner_send = grid.inner.send_and_receive

    def spy(messages, **kwargs):  # noqa: ANN001, ANN003, ANN202
        messages = list(messages)
        sent.extend(name for m in messages for name in m.content.array_records)
        return inner_send(messages, **kwargs)

    monkeypatch.setattr(grid.inner, "send_and_receive", spy)
    task = task_for(config_to_json(cfg))
    run = ProtocolRun(grid=grid, num_rounds=1, initial_state=task.initial_state(), train_config=train_config(cfg))
    final = run_protocol(build_protocol(cfg, grid), run, settings=LoopSettings(eval_every=0, max_empty_rounds=0))
    assert ledger.rows and all(r.status == "ok" for r in ledger.rows)
    assert "gradient" not in sent and "weights" in sent
    assert_close(final, centralized_step(cfg, task, task.initial_state(), 0))


def test_splitfed_auto_cut_on_the_mlp_trains_on_the_terminal():
    """Regression (issue #12 item 2): splitfed-v1 with split.cut = auto on the MLP, 2 rounds, 2
    terminals: every exchange succeeds and the terminal computes (auto no longer picks net.0,
    which sent the raw samples and left the terminal 0 FLOPs)."""
    cfg, task, ledger, final, _ = run_split(["training.mode=splitfed-v1", "model.name=mlp", "split.cut=auto", "devices={laptop = 2}", "train.local_epochs=1"], rounds=2)
    train = [r for r in ledger.rows if r.phase == "train"]
    assert {r.round for r in train} == {1, 2} and all(r.status == "ok" for r in train)
    assert all(r.flops > 0 for r in train if r.seq > 0)  # the terminal's backward and forward of net.1
    assert train[1].bytes_down > 64 * 4  # a gradient at the cut comes back
    assert not torch.equal(final["net.1.weight"], task.initial_state()["net.1.weight"])
