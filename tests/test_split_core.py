"""Split learning core: the model contract, cutting, exactness of the per-step API, costs, cut choice."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsplit.devices import DeviceProfile
from fedsplit.models import build_model, step_flops
from fedsplit.models.contract import blocks, cut_points
from fedsplit.split import (
    SplitParts,
    UShapeParts,
    assemble_state_dict,
    choose_cut,
    client_backward_from_state,
    client_backward_recompute,
    client_forward,
    describe_cut_choice,
    load_part_state_dict,
    load_sgd_state,
    make_sgd,
    part_state_dict,
    predict_batch_time,
    predict_epoch_time,
    profile_split,
    server_cuts,
    server_step,
    sgd_state,
    split_model,
    split_training_step,
    to_numpy,
)

ZOO = ["mlp", "fedavg-cnn", "cnn", "mobilenet"]
SHAPE = (1, 8, 8)
BATCH = 4
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 1e-3
TOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(seed: int, shape: tuple[int, ...] = SHAPE, n: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, 10, (n,), generator=g)


def _model(name: str, shape: tuple[int, ...] = SHAPE) -> nn.Module:
    return build_model(name, shape, 10, hidden=16, width=0.5, seed=0)


def _centralized(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], micro: int = 1) -> dict:
    """Reference: SGD over the unsplit model (train_local's optimiser), one step per batch.

    ``micro > 1``: gradient accumulation over that many equal micro-batches of each batch.
    """
    reference = copy.deepcopy(model).train()
    opt = torch.optim.SGD(reference.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=True)
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        if micro == 1:
            nn.functional.cross_entropy(reference(x), y).backward()
        else:
            loss = sum(
                nn.functional.cross_entropy(reference(xm), ym, reduction="sum")
                for xm, ym in zip(x.chunk(micro), y.chunk(micro))
            ) / len(y)
            loss.backward()
        opt.step()
    return reference.state_dict()


def _split_steps(parts: SplitParts | UShapeParts, batches, *, recompute: bool, micro: int = 1) -> dict:
    optimizers = {
        role: make_sgd(part, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        for role, part in parts.named_parts().items()
    }
    for x, y in batches:
        if micro > 1:
            x, y = list(x.chunk(micro)), list(y.chunk(micro))
        split_training_step(parts, optimizers, x, y, recompute=recompute)
    return parts.state_dict()


def _assert_close_state(got: dict, want: dict, label: str) -> None:
    assert list(got) == list(want), label
    for key in want:
        a, b = got[key].double(), want[key].double()
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        assert diff <= TOL, f"{label}: {key} differs by {diff:.3g}"


def _ushape_pairs(n_cuts: int, limit: int = 12) -> list[tuple[int, int]]:
    pairs = list(itertools.combinations(range(n_cuts), 2))
    stride = max(1, len(pairs) // limit)
    return pairs[::stride] + [pairs[-1]]


# ---------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", ZOO)
def test_blocks_compose_to_forward_and_keep_keys(name: str) -> None:
    model = _model(name).eval()
    x, _ = _data(0)
    named = blocks(model)
    out = x
    for _, block in named:
        out = block(out)
    assert torch.equal(out, model(x))
    keys = [f"{block_name}.{key}" for block_name, block in named for key in block.state_dict()]
    assert sorted(keys) == sorted(model.state_dict())
    assert cut_points(model) == [block_name for block_name, _ in named[:-1]]


def test_fedavg_cnn_blocks_are_its_layers() -> None:
    names = [n for n, _ in blocks(_model("fedavg-cnn"))]
    assert names == [f"features.{i}" for i in range(6)] + [f"classifier.{i}" for i in range(4)]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("train", [False, True])
def test_every_cut_composes_exactly(name: str, train: bool) -> None:
    model = _model(name)
    model.train(train)
    x, _ = _data(1)
    with torch.no_grad():
        want = copy.deepcopy(model)(x)
        for cut in cut_points(model):
            parts = split_model(model, cut)
            parts.train(train)
            assert torch.equal(parts.server(parts.client(x)), want), cut
        for first, second in _ushape_pairs(len(cut_points(model))):
            parts = split_model(model, (first, second))
            parts.train(train)
            got = parts.client_head(parts.server_middle(parts.client_front(x)))
            assert torch.equal(got, want), (first, second)


def test_parts_are_copies_with_the_models_keys() -> None:
    model = _model("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parts = split_model(model, "stages.0")
    model_ptrs = {p.data_ptr() for p in model.state_dict().values()}
    for part in parts.named_parts().values():
        assert not model_ptrs & {t.data_ptr() for t in part.state_dict().values()}
    assert set(parts.client.state_dict()) == {k for k in before if k.startswith("stem.") or k.startswith("stages.0.")}
    assert list(parts.state_dict()) == list(before)
    _split_steps(parts, [_data(2)], recompute=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the model is untouched


def test_part_state_round_trip_through_numpy() -> None:
    model = _model("fedavg-cnn")
    parts = split_model(model, "features.2")
    _split_steps(parts, [_data(3)], recompute=False)
    full = {k: v.numpy().copy() for k, v in parts.state_dict().items()}
    for value in full.values():
        value.flags.writeable = False  # as a zero-copy message view
    fresh = split_model(_model("fedavg-cnn"), "features.2")
    load_part_state_dict(fresh.client, full)  # a full state: the part takes its keys
    load_part_state_dict(fresh.server, part_state_dict(parts.server, as_numpy=True))
    assembled = assemble_state_dict(
        [part_state_dict(fresh.server), part_state_dict(fresh.client)], tuple(model.state_dict())
    )
    assert list(assembled) == list(model.state_dict())
    _assert_close_state(assembled, parts.state_dict(), "round trip")
    whole = _model("fedavg-cnn")
    whole.load_state_dict(assembled)
    x, _ = _data(4)
    assert torch.equal(whole(x), parts.server(parts.client(x)))
    with pytest.raises(KeyError):
        load_part_state_dict(fresh.client, {})
    with pytest.raises(ValueError, match="more than one part"):
        assemble_state_dict([part_state_dict(fresh.client), part_state_dict(fresh.client)])


def test_sequential_models_split() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True)),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )
    assert cut_points(model) == ["0.0", "0.1", "1"]
    x, y = _data(5)
    for cut in cut_points(model):
        parts = split_model(model, cut)
        assert torch.equal(parts.server(parts.client(x)), model(x))
        for recompute in (False, True):
            got = _split_steps(split_model(model, cut), [(x, y), _data(6)], recompute=recompute)
            _assert_close_state(got, _centralized(model, [(x, y), _data(6)]), f"sequential {cut}")


@pytest.mark.parametrize(
    "bad, match",
    [("nope", "allowed cuts: 0=net.0, 1=net.1, 2=net.2"), (3, "out of range"), (-4, "out of range"), ("net.3", "allowed")],
)
def test_bad_cuts_name_the_allowed_ones(bad, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_model(_model("mlp"), bad)
    with pytest.raises(ValueError, match="allowed cuts"):
        profile_split(_model("mlp"), bad, SHAPE, BATCH)


def test_bad_ushape_and_unsupported_models() -> None:
    model = _model("mlp")
    assert split_model(model, -1).cut == "net.2"
    with pytest.raises(ValueError, match="second cut must come after"):
        split_model(model, ("net.2", "net.1"))
    with pytest.raises(ValueError, match="exactly two"):
        split_model(model, ("net.0", "net.1", "net.2"))

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + x

    with pytest.raises(ValueError, match="model Custom cannot be split"):
        cut_points(Custom())


# -------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", ZOO)
def test_vanilla_steps_equal_centralized_at_every_cut(name: str) -> None:
    model = _model(name)
    batches = [_data(10), _data(11)]  # two steps: the second one uses the momentum buffers
    want = _centralized(model, batches)
    for cut in cut_points(model):
        for recompute in (False, True):
            got = _split_steps(split_model(model, cut), batches, recompute=recompute)
            _assert_close_state(got, want, f"{name} cut {cut} recompute={recompute}")


@pytest.mark.parametrize("name", ZOO)
def test_ushape_steps_equal_centralized(name: str) -> None:
    model = _model(name)
    batches = [_data(12), _data(13)]
    want = _centralized(model, batches)
    for pair in _ushape_pairs(len(cut_points(model)), limit=8):
        for recompute in (False, True):
            got = _split_steps(split_model(model, pair), batches, recompute=recompute)
            _assert_close_state(got, want, f"{name} cuts {pair} recompute={recompute}")


@pytest.mark.parametrize("name, cut", [("mlp", "net.1"), ("fedavg-cnn", "features.5"), ("cnn", "stages.1")])
def test_micro_batches(name: str, cut: str) -> None:
    """A list of micro-batches: one step, the mean loss over all samples."""
    model = _model(name)
    batches = [_data(14, n=8), _data(15, n=8)]
    # Without BatchNorm: the step on the whole batch; with it: centralized accumulation.
    want = _centralized(model, batches, micro=2 if name == "cnn" else 1)
    for recompute in (False, True):
        got = _split_steps(split_model(model, cut), batches, recompute=recompute, micro=2)
        _assert_close_state(got, want, f"{name} micro-batches recompute={recompute}")
        got = _split_steps(split_model(model, (0, cut)), batches, recompute=recompute, micro=2)
        _assert_close_state(got, want, f"{name} u-shape micro-batches recompute={recompute}")


def test_per_message_functions_with_numpy_messages_and_stored_momentum() -> None:
    """The terminal keeps nothing in memory between messages: weights and momentum go through numpy."""
    model = _model("cnn")
    batches = [_data(16), _data(17), _data(18)]
    want = _centralized(model, batches)

    parts = split_model(model, "stages.0")
    server_opt = make_sgd(parts.server, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    stored = {"weights": part_state_dict(parts.client, as_numpy=True), "momentum": {}}
    for x, y in batches:
        # message 1 (terminal, a fresh process): forward only, nothing stored
        client = split_model(_model("cnn"), "stages.0").client
        load_part_state_dict(client, stored["weights"])
        sent = to_numpy(client_forward(client, x.numpy(), keep_graph=False).activations)
        assert all(np.array_equal(v, stored["weights"][k]) for k, v in part_state_dict(client, as_numpy=True).items())
        # message 2 (server)
        grad, loss, correct = server_step(parts.server, sent, y.numpy(), server_opt)
        assert 0 <= correct <= len(y) and math.isfinite(loss)
        # message 3 (terminal, another fresh process): recompute, backward, step, store
        client = split_model(_model("cnn"), "stages.0").client
        load_part_state_dict(client, stored["weights"])
        opt = make_sgd(client, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        load_sgd_state(opt, client, stored["momentum"])
        client_backward_recompute(client, x.numpy(), to_numpy(grad), opt)
        stored = {
            "weights": part_state_dict(client, as_numpy=True),
            "momentum": {k: v.numpy() for k, v in sgd_state(opt, client).items()},
        }
    got = assemble_state_dict(
        [{k: torch.from_numpy(v) for k, v in stored["weights"].items()}, parts.server.state_dict()],
        parts.key_order,
    )
    _assert_close_state(got, want, "numpy messages")


def test_stateful_client_and_grad_shapes() -> None:
    model = _model("mlp")
    parts = split_model(model, "net.2")
    x, y = _data(19)
    state = client_forward(parts.client, x)
    assert state.has_graph and state.activations.shape == (BATCH, 16) and not state.activations.requires_grad
    grad, _, _ = server_step(parts.server, state.activations, y)
    with pytest.raises(ValueError, match="shape"):
        client_backward_from_state(state, grad[:2])
    client_backward_from_state(state, grad)
    with pytest.raises(ValueError, match="recompute"):
        client_backward_from_state(state, grad)


def test_recompute_with_dropout_needs_the_same_seed() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 10))
    x, y = _data(20)
    results = []
    for recompute in (False, True):
        parts = split_model(model, "3")
        opt = make_sgd(parts.client, lr=LR)
        state = client_forward(parts.client, x, keep_graph=not recompute, seed=7)
        grad, _, _ = server_step(parts.server, state.activations, y)
        if recompute:
            client_backward_recompute(parts.client, x, grad, opt, seed=7)
        else:
            client_backward_from_state(state, grad, opt)
        results.append(parts.client.state_dict())
    _assert_close_state(results[1], results[0], "dropout with seed")


def test_torchvision_resnet18_splits_exactly() -> None:
    shape = (3, 32, 32)
    model = build_model("tv:resnet18", shape, 10, seed=0)
    cuts = cut_points(model)
    assert {"maxpool", "layer1.0", "layer2.1", "avgpool", "flatten"} <= set(cuts)
    x, y = _data(21, shape)
    batches = [(x, y)]
    want = _centralized(model, batches)
    with torch.no_grad():
        reference = copy.deepcopy(model).eval()(x)
    for cut in ("relu", "layer2.1", ("maxpool", -1)):
        parts = split_model(model, cut)
        parts.train(False)
        with torch.no_grad():  # eval mode leaves the parts unchanged for the step below
            chain = parts.client if isinstance(parts, SplitParts) else parts.client_front
            for part in list(parts.named_parts().values())[1:]:
                chain = nn.Sequential(chain, part)
            assert torch.equal(chain(x), reference)
        got = _split_steps(parts, batches, recompute=cut == "layer2.1")
        _assert_close_state(got, want, f"resnet18 cut {cut}")
    profile = profile_split(model, "layer2.1", shape, BATCH)
    assert profile.total_flops == step_flops(model, shape, BATCH)
    assert profile.cuts[0].activation_shape == (BATCH, 128, 4, 4)


def test_torchvision_mobilenet_v3_small_blocks_compose() -> None:
    shape = (3, 32, 32)
    model = build_model("tv:mobilenet_v3_small", shape, 10, seed=0).eval()
    x, _ = _data(22, shape)
    out = x
    with torch.no_grad():
        for _, block in blocks(model):
            out = block(out)
        assert torch.equal(out, model(x))
        parts = split_model(model, "features.3.block")
        parts.train(False)
        assert torch.equal(parts.server(parts.client(x)), model(x))


def test_torchvision_model_with_tuple_output_is_refused() -> None:
    import torchvision

    model = torchvision.models.googlenet(weights=None, num_classes=10, aux_logits=True, init_weights=False)
    with pytest.raises(ValueError, match="GoogLeNet"):
        cut_points(model)


# ------------------------------------------------------------------------------------ costs


@pytest.mark.parametrize("name", ZOO)
def test_profile_flops_add_up_and_bytes_match(name: str) -> None:
    model = _model(name)
    total = step_flops(model, SHAPE, BATCH)
    x, _ = _data(23)
    for index, cut in enumerate(cut_points(model)):
        profile = profile_split(model, cut, SHAPE, BATCH)
        assert profile.total_flops == total, cut  # tolerance 0: see fedsplit.split.profile
        client = profile.part("client")
        parts = split_model(model, cut)
        assert client.parameters == sum(p.numel() for p in parts.client.parameters())
        act = client_forward(parts.client, x, keep_graph=False).activations
        (cut_profile,) = profile.cuts
        assert cut_profile.index == index and cut_profile.activation_shape == tuple(act.shape)
        assert cut_profile.activation_bytes == act.numel() * 4
        expected_grad = act.numel() * 4 if parts.cut_gradient_needed else 0
        assert cut_profile.gradient_bytes == expected_grad
        assert profile.label_bytes == 8 * BATCH
        assert client.recompute_flops == 2 * client.forward_flops + client.backward_flops
    for pair in _ushape_pairs(len(cut_points(model)), limit=6):
        profile = profile_split(model, pair, SHAPE, BATCH)
        assert profile.total_flops == total and profile.label_bytes == 0 and len(profile.cuts) == 2


def test_parameter_free_client_part_gets_no_gradient() -> None:
    model = _model("mlp")  # cut after Flatten: nothing to train on the terminal
    parts = split_model(model, "net.0")
    assert not parts.cut_gradient_needed
    profile = profile_split(model, "net.0", SHAPE, BATCH)
    assert profile.cuts[0].gradient_bytes == 0
    result = split_training_step(parts, {"server": make_sgd(parts.server, lr=LR)}, *_data(24))
    assert result.downlink_bytes == 0 and result.uplink_bytes == BATCH * 64 * 4 + BATCH * 8


def _profile(name: str, **values: float) -> DeviceProfile:
    base = dict(
        num_cpus=1.0, num_gpus=0.0, flops_per_s=1e9, cpu_hz=1e9, kappa=1e-28, uplink_bps=1e6,
        downlink_bps=1e7, link_latency_s=0.01, tx_power_w=0.5, availability=1.0,
    )
    base.update(values)
    return DeviceProfile(name=name, **base)


def test_predicted_time_follows_the_formula() -> None:
    model, device, server = _model("fedavg-cnn"), _profile("terminal"), _profile("edge", flops_per_s=1e11)
    profile = profile_split(model, "features.2", SHAPE, BATCH)
    client, srv = profile.part("client"), profile.part("server")
    cut = profile.cuts[0]
    per_batch = (
        client.flops / 1e9 + 8 * (cut.activation_bytes + 8 * BATCH) / 1e6 + srv.flops / 1e11
        + 8 * cut.gradient_bytes / 1e7 + 2 * 0.01
    )
    assert predict_batch_time(profile, device, server).total_s == pytest.approx(per_batch)
    # 10 samples in batches of 4: 3 latencies, 10/4 of the per-batch compute and transfer
    want = 3 * 0.02 + 10 / 4 * (per_batch - 0.02)
    assert predict_epoch_time(profile, device, server, 10, 4, "vanilla") == pytest.approx(want)
    recompute = predict_epoch_time(profile, device, server, 8, 4, recompute=True)
    assert recompute == pytest.approx(2 * (per_batch + client.forward_flops / 1e9))
    with pytest.raises(ValueError, match="u-shape"):
        predict_epoch_time(profile, device, server, 8, 4, "u-shape")


def test_choose_cut_minimises_predicted_time() -> None:
    model, server = _model("fedavg-cnn"), _profile("edge", flops_per_s=1e12)
    # A slow terminal on a fast link keeps the least compute: the first conv. ReLU and max-pooling
    # count no FLOPs, so of features.0-2 the pooled, smallest activations win by the bytes.
    slow = _profile("slow", flops_per_s=1e3, uplink_bps=1e12, downlink_bps=1e12)
    best, times = choose_cut(model, SHAPE, BATCH, 32, slow, server)
    assert list(times) == cut_points(model) and best == "features.2"
    assert times["features.0"] > times["features.2"] and times["features.3"] > 2 * times["features.2"]
    assert times[best] == min(times.values())
    # A fast terminal on a slow link cuts where the least crosses: after the second pooling
    # (64x2x2 per sample; classifier.0 only flattens it and ties, the earliest cut wins).
    fast = _profile("fast", flops_per_s=1e15, uplink_bps=1e3, downlink_bps=1e3)
    best, times = choose_cut(model, SHAPE, BATCH, 32, fast, server)
    assert best == min(times, key=times.get) and best == "features.5"
    assert times["classifier.0"] == times["features.5"]
    line = describe_cut_choice("fast", best, times)
    assert "auto for fast: features.5" in line and "features.0=" in line
    best, times = choose_cut(model, SHAPE, BATCH, 32, fast, server, "u-shape")
    # the increasing pairs whose middle (the server's part) holds a parameter and costs FLOPs
    names = cut_points(model)
    assert isinstance(best, tuple) and list(times) == [(names[a], names[b]) for a, b in server_cuts(model, SHAPE, BATCH, "u-shape")]
    assert 0 < len(times) < math.comb(len(names), 2) and ("features.0", "features.1") not in times  # a ReLU alone


def test_auto_cut_keeps_a_layer_with_parameters_on_the_terminal() -> None:
    """Regression (issue #12 item 2): on the MLP the fastest prediction is the cut after Flatten
    (net.0): no terminal compute, the raw samples sent. ``auto`` must never choose a cut whose
    input-side part has no parameter, for any terminal and either protocol shape."""
    from fedsplit.split import local_cuts

    model, server = _model("mlp"), _profile("edge", flops_per_s=1e12)
    assert local_cuts(model) == [1, 2] and local_cuts(_model("fedavg-cnn")) == list(range(len(cut_points(_model("fedavg-cnn")))))
    for device in (_profile("slow", flops_per_s=1e3, uplink_bps=1e12, downlink_bps=1e12), _profile("fast", flops_per_s=1e15)):
        best, times = choose_cut(model, SHAPE, BATCH, 32, device, server)
        assert best == "net.1" and "net.0" not in times
        # U-shape: the one pair with a parameter on the front (net.1, net.2) leaves the server a
        # ReLU, which computes nothing: auto refuses (the cuts can be named explicitly)
        with pytest.raises(ValueError, match="the middle part between the two cuts"):
            choose_cut(model, SHAPE, BATCH, 32, device, server, "u-shape")
    # named explicitly, the parameter-free cut is still a candidate (and the slow terminal's best)
    best, _ = choose_cut(model, SHAPE, BATCH, 32, _profile("slow", flops_per_s=1e3, uplink_bps=1e12, downlink_bps=1e12), server, candidates=[0, 1])
    assert best == "net.0"
    flat = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(64, 10))  # every cut sends the raw samples
    with pytest.raises(ValueError, match="no layer with parameters on the terminal"):
        choose_cut(flat, SHAPE, BATCH, 32, _profile("any"), server)
