"""The simulated clock: exact FLOP counts and their conversion through the device profiles."""

from __future__ import annotations

import pytest

from fedsplit.devices import builtin_profiles, exchange_cost
from fedsplit.models import build_model, step_flops


def mlp_train_flops(batch: int, inputs: int = 64, hidden: int = 64, classes: int = 10) -> int:
    """Forward 2*B*(in*h + h*c); backward: weight grads of both layers + input grad of layer 2."""
    forward = 2 * batch * (inputs * hidden + hidden * classes)
    backward = 2 * batch * (inputs * hidden + hidden * classes) + 2 * batch * hidden * classes
    return forward + backward


def test_step_flops_matches_hand_count():
    model = build_model("mlp", (1, 8, 8), 10, hidden=64)
    assert step_flops(model, (1, 8, 8), 32) == mlp_train_flops(32)
    assert step_flops(model, (1, 8, 8), 5) == mlp_train_flops(5)
    assert step_flops(model, (1, 8, 8), 1, train=False) == 2 * (64 * 64 + 64 * 10)


def test_exchange_cost_arithmetic():
    pi = builtin_profiles()["raspberry-pi-4"]
    cost = exchange_cost(pi, flops=8e9, bytes_up=1_000_000, bytes_down=2_000_000)
    assert cost.compute_s == pytest.approx(8e9 / pi.flops_per_s)
    up_s = 8e6 / pi.uplink_bps
    assert cost.comm_s == pytest.approx(up_s + 16e6 / pi.downlink_bps + 2 * pi.link_latency_s)
    energy = pi.kappa * pi.cpu_hz**2 * (cost.compute_s * pi.cpu_hz) + pi.tx_power_w * up_s
    assert cost.energy_j == pytest.approx(energy)


def test_fedavg_cnn_has_the_paper_parameter_count():
    from fedsplit.models import count_parameters

    assert count_parameters(build_model("fedavg-cnn", (1, 28, 28), 10)) == 1_663_370


def test_flops_are_counted_where_the_model_is():
    """A GPU terminal's model is not on the CPU: the FLOP probe must run on the model's device
    (here the meta device stands in for a GPU on a CPU-only machine; the old probe fed it CPU
    tensors and failed with a device mismatch)."""
    from fedsplit.models import build_model, step_flops
    from fedsplit.models.flops import _CACHE

    model = build_model("fedavg-cnn", (1, 8, 8), 10, seed=0)
    on_cpu = step_flops(model, (1, 8, 8), 4)
    _CACHE.clear()
    assert step_flops(model.to("meta"), (1, 8, 8), 4) == on_cpu


def test_user_profile_may_inherit_from_a_user_profile_listed_later_and_cycles_are_named():
    # profiles.b.base = 'a' was "unknown device profile" when [profiles.a] came after [profiles.b]
    from fedsplit.devices.profile import resolve_profiles

    profiles = resolve_profiles({"b": {"base": "a", "tx_power_w": 0.3}, "a": {"base": "laptop", "uplink_bps": 1e6}})
    assert profiles["b"].uplink_bps == 1e6 and profiles["b"].tx_power_w == 0.3
    assert profiles["b"].flops_per_s == profiles["laptop"].flops_per_s
    overridden = resolve_profiles({"laptop": {"base": "laptop", "uplink_bps": 2e6}})
    assert overridden["laptop"].uplink_bps == 2e6  # a built-in overridden through base = its own name
    with pytest.raises(ValueError, match=r"profiles\.b\.base = 'a': leads back to itself \(a -> b -> a\)"):
        resolve_profiles({"a": {"base": "b"}, "b": {"base": "a"}})


def test_warming_the_flop_counter_pays_its_one_off_import_and_counts_stay_the_same():
    from tests.conftest import fresh_interpreter_json

    probe = (
        "import json, sys\n"
        "from fedsplit.models import build_model\n"
        "from fedsplit.models.flops import step_flops, warm_flop_counter\n"
        "before = 'torch._dynamo' in sys.modules\n"
        "warm_flop_counter()\n"
        "after = 'torch._dynamo' in sys.modules\n"
        "print(json.dumps([before, after, step_flops(build_model('mlp', (1, 8, 8), 10, hidden=16), (1, 8, 8), 5)]))\n"
    )
    before, after, counted = fresh_interpreter_json(probe)
    assert (before, after) == (False, True)
    assert counted == step_flops(build_model("mlp", (1, 8, 8), 10, hidden=16), (1, 8, 8), 5)
