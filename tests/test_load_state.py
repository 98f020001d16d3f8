"""The ClientApp's fast weight loading gives what ``load_state_dict`` gives, and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsplit.clients.app import load_state


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))  # noqa: E731
    return make(), make()


def _trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    model.train()
    model(torch.randn(8, 1, 8, 8)).sum().backward()  # BatchNorm's running statistics and counter move
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loading_equals_load_state_dict_in_place() -> None:
    source, target = _models()
    state = _trained_state(source)
    state["1.num_batches_tracked"] = state["1.num_batches_tracked"].to(torch.int32)  # converted, as load_state_dict does
    reference = _models()[1]
    reference.load_state_dict(state, strict=True)
    weight = target[0].weight
    load_state(target, state)
    assert target[0].weight is weight  # the same Parameter (an optimizer holding it still sees it)
    for key, value in reference.state_dict().items():
        got = target.state_dict()[key]
        assert got.dtype == value.dtype and torch.equal(got, value), key
    assert not any(p.grad is not None and p.grad.grad_fn is not None for p in target.parameters())


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_a_state_that_does_not_fit_raises_load_state_dicts_error(change: str) -> None:
    source, target = _models()
    state = dict(source.state_dict())
    if change == "missing":
        del state["4.bias"]
    elif change == "unexpected":
        state["5.weight"] = torch.zeros(1)
    else:
        state["4.bias"] = torch.zeros(11)
    with pytest.raises(RuntimeError) as ours:
        load_state(target, state)
    with pytest.raises(RuntimeError) as theirs:
        target.load_state_dict(state, strict=True)
    assert str(ours.value) == str(theirs.value)


def test_a_module_with_load_hooks_is_loaded_by_load_state_dict() -> None:
    source, target = _models()
    calls: list[str] = []
    target[4].register_load_state_dict_post_hook(lambda module, keys: calls.append("post"))
    load_state(target, dict(source.state_dict()))
    assert calls == ["post"]
    assert torch.equal(target[4].weight, source[4].weight)
