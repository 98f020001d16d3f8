"""The model family (size knob), magnitude pruning and int8 post-training quantization."""

from __future__ import annotations

import pytest
import torch

from fedsplit.models import build_model, inference_flops, step_flops
from fedsplit.models.compress import (
    count_nonzero_parameters,
    int8_skeleton,
    make_permanent,
    prune_magnitude,
    quantize_int8,
    weight_sparsity,
)
from fedsplit.models.family import (
    DIGITS_FAMILY,
    FamilyMember,
    family,
    member_name,
    merge_tree,
    separation,
)
from fedsplit.report.members import (
    derive_int8,
    derive_pruned,
    load_member,
    training_pool,
)
from tests.family_helpers import make_member


def test_members_are_named_by_resolution_and_width_and_train_through_simulate_keys():
    members = family("cnn", [(5, 0.125), (8, 1.0)])
    assert [m.name for m in members] == ["cnn-5px-w0.125", "cnn-8px-w1"]
    assert members[0].overrides() == {"run_name": "cnn-5px-w0.125", "data": {"resolution": 5}, "model": {"name": "cnn", "width": 0.125}}
    assert member_name("mobilenet", 0, 0.5) == "mobilenet-native-w0.5"
    with pytest.raises(ValueError, match="appears twice"):
        family("cnn", [(8, 1.0), (8, 1)])
    with pytest.raises(ValueError, match="no width knob"):
        FamilyMember("x", "mlp", 8, 1.0)
    with pytest.raises(ValueError, match="width = 0"):
        FamilyMember("x", "cnn", 8, 0)


def test_default_digits_family_grows_in_flops():
    flops = [inference_flops(build_model("cnn", (1, r, r), 10, width=w), (1, r, r)) for r, w in DIGITS_FAMILY]
    assert flops == sorted(flops) and len(set(flops)) == len(flops) >= 4


def test_merge_tree_merges_tables_and_copies():
    base = {"rounds": 10, "data": {"name": "digits", "resolution": 0}}
    merged = merge_tree(base, {"data": {"resolution": 5}, "seed": 1})
    assert merged == {"rounds": 10, "data": {"name": "digits", "resolution": 5}, "seed": 1}
    assert base["data"]["resolution"] == 0


def test_separation_names_the_pair_that_does_not_grow():
    ok = [{"name": "a", "flops": 1, "accuracy": 0.5}, {"name": "b", "flops": 2, "accuracy": 0.6}]
    assert separation(ok) == []
    bad = ok + [{"name": "c", "flops": 3, "accuracy": 0.55}]
    problems = separation(bad)
    assert len(problems) == 1 and problems[0].startswith("b (") and "-> c (" in problems[0]


def test_global_magnitude_pruning_zeroes_the_smallest_weights_and_survives_training():
    model = build_model("cnn", (1, 8, 8), 10, width=0.25, seed=0)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    before = [m.weight.detach().clone() for m in layers]
    magnitudes = torch.cat([w.abs().flatten() for w in before])
    threshold = magnitudes.kthvalue(int(0.6 * magnitudes.numel())).values
    prune_magnitude(model, 0.6)
    masks = [m.weight_mask.clone() for m in layers]
    for w, mask in zip(before, masks):  # global: the smallest weights of the whole network go
        assert bool((w.abs()[mask == 0] <= threshold).all()) and bool((w.abs()[mask == 1] >= threshold).all())
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):  # masks stay attached: pruned entries get no gradient
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    make_permanent(model)
    assert not any(name.endswith(("_orig", "_mask")) for name in model.state_dict())
    for layer, w, mask in zip(layers, before, masks):
        assert bool((layer.weight[mask == 0] == 0).all())  # still pruned after training
        assert not torch.equal(layer.weight[mask == 1], w[mask == 1])  # the rest trained
    assert weight_sparsity(model) == pytest.approx(0.6, abs=1e-3)
    fresh = build_model("cnn", (1, 8, 8), 10, width=0.25)
    fresh.load_state_dict(model.state_dict())  # an ordinary model of the same architecture
    with pytest.raises(ValueError, match="amount"):
        prune_magnitude(build_model("cnn", (1, 8, 8), 10), 1.0)


def test_int8_quantization_tracks_the_float_model_and_reloads_from_its_state_dict():
    model = build_model("cnn", (1, 8, 8), 10, width=0.5, seed=0).eval()
    calibration = torch.randn(64, 1, 8, 8)
    quantized = quantize_int8(model, calibration)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        ref, out = model(x), quantized(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert any("quantized" in type(m).__module__ for m in quantized.modules())
    skeleton = int8_skeleton(build_model("cnn", (1, 8, 8), 10, width=0.5, seed=1), (1, 8, 8), backend=torch.backends.quantized.engine)
    skeleton.load_state_dict(quantized.state_dict())
    with torch.no_grad():
        assert torch.equal(skeleton(x), out)


def test_derived_members_load_like_trained_ones(tmp_path):
    parent = make_member(tmp_path, "cnn-8px-w0.5", 8, 0.5, epochs=1)
    pruned = derive_pruned(parent, tmp_path, amount=0.5, finetune_epochs=1)
    int8 = derive_int8(pruned, tmp_path, calibration_samples=64)
    assert pruned.name == "cnn-8px-w0.5-pruned50" and int8.name == "cnn-8px-w0.5-pruned50-int8"
    p, q = load_member(pruned), load_member(int8)
    assert (p.kind, q.kind) == ("pruned", "int8") and q.info["parent"] == "cnn-8px-w0.5-pruned50"
    assert weight_sparsity(p.model) == pytest.approx(0.5, abs=1e-3)
    assert p.info["nonzero_params"] == count_nonzero_parameters(p.model) < sum(t.numel() for t in p.model.parameters())
    test = p.task.data.server_test
    with torch.no_grad():
        agree = (p.model(test.x).argmax(1) == q.model(test.x).argmax(1)).float().mean()
    assert agree > 0.9  # int8 keeps (almost) every decision of its float parent
    x, _ = training_pool(p.task)
    assert x.shape[1:] == test.x.shape[1:]
    with pytest.raises(ValueError, match="int8 member cannot be pruned"):
        derive_pruned(int8, tmp_path, amount=0.1)


def test_a_trailing_batch_of_one_is_left_out_under_batchnorm():
    # 4x4 inputs leave the last stage 1x1 maps: BatchNorm cannot train on one sample there (torch
    # raised, and every terminal whose partition size was 1 more than a multiple of the batch
    # size failed every round of the low-resolution members).
    from fedsplit.learning.local import train_local

    model = build_model("cnn", (1, 4, 4), 10, width=0.25, seed=0)
    x, y = torch.randn(33, 1, 4, 4), torch.randint(0, 10, (33,))
    result = train_local(model, x, y, epochs=2, batch_size=32, lr=0.1)
    assert result.steps == 2 and result.flops == 2 * step_flops(model, (1, 4, 4), 32, train=True)
    mlp = build_model("mlp", (1, 4, 4), 10)  # no BatchNorm: the batch of one trains
    assert train_local(mlp, x, y, epochs=1, batch_size=32, lr=0.1).steps == 2

