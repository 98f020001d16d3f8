"""``split.cut = auto`` leaves the edge server a part that computes, and the run records its choice.

Regression: on the default model (``cnn``) U-shape ``auto`` picked ``head.0,head.1``, whose middle
part (the server's) is one ``Flatten``: no parameter, no FLOPs, so rounds.csv showed
``server_flops = 0`` and the split only shipped activations back and forth; and the chosen cut was
written nowhere a user sees it (config.toml keeps ``cut = "auto"``).
"""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from fedsplit.config import load_config
from fedsplit.devices import DeviceProfile, Population, builtin_profiles, resolve_profiles
from fedsplit.learning import config_to_json, task_for
from fedsplit.models import build_model
from fedsplit.models.contract import cut_points
from fedsplit.report.console import print_summary
from fedsplit.split import choose_cut, parse_cut, profile_split, server_cuts

SHAPE = (1, 28, 28)
BATCH = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _profile(name: str, **values: float) -> DeviceProfile:
    base = dict(
        num_cpus=1.0, num_gpus=0.0, flops_per_s=1e9, cpu_hz=1e9, kappa=1e-28, uplink_bps=1e6,
        downlink_bps=1e7, link_latency_s=0.01, tx_power_w=0.5, availability=1.0,
    )
    base.update(values)
    return DeviceProfile(name=name, **base)


def _terminals() -> list[DeviceProfile]:
    """Every built-in class, and the extremes: a slow terminal on a fast link (keeps the least
    compute), a fast terminal on a slow link (cuts where the least crosses)."""
    return [
        *builtin_profiles().values(),
        _profile("slow", flops_per_s=1e3, uplink_bps=1e12, downlink_bps=1e12),
        _profile("fast", flops_per_s=1e15, uplink_bps=1e3, downlink_bps=1e3),
    ]


def _middle_works(model: nn.Module, cut: tuple[str, str], shape: tuple[int, ...] = SHAPE) -> bool:
    middle = profile_split(model, cut, shape, BATCH).part("server_middle")
    return middle.parameters > 0 and middle.flops > 0


def test_ushape_auto_on_the_cnn_leaves_the_server_a_middle_that_computes() -> None:
    model = build_model("cnn", SHAPE, 10)
    server = builtin_profiles()["edge-server"]
    names = cut_points(model)
    for device in _terminals():
        best, times = choose_cut(model, SHAPE, BATCH, 256, device, server, "u-shape", recompute=True)
        assert _middle_works(model, best), (device.name, best)
        # middles of a Flatten, of a ReLU, of a BatchNorm (parameters, but no FLOPs counted)
        assert not {("head.0", "head.1"), ("stem.1", "stem.2"), ("stem.0", "stem.1")} & set(times)
        assert all(_middle_works(model, cut) for cut in times), device.name
        # every pair left out has a middle without a parameter or without FLOPs
        assert [(names[a], names[b]) for a, b in server_cuts(model, SHAPE, BATCH, "u-shape")] == list(times)
    # named explicitly, the degenerate pair is still a candidate (and the fast terminal's best)
    fast = _profile("fast", flops_per_s=1e15, uplink_bps=1e3, downlink_bps=1e3)
    best, _ = choose_cut(model, SHAPE, BATCH, 256, fast, server, "u-shape", candidates=[("head.0", "head.1"), ("stages.1", "head.0")])
    assert best == ("head.0", "head.1")


def test_vanilla_auto_leaves_the_server_a_part_that_computes() -> None:
    """The same rule in the one-cut modes: a model whose last block computes nothing."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10), nn.Identity())
    server = _profile("edge", flops_per_s=1e12)
    assert server_cuts(model, (1, 8, 8), BATCH) == [0, 1, 2]  # cut 3 leaves the server only the Identity
    for device in _terminals():
        best, times = choose_cut(model, (1, 8, 8), BATCH, 64, device, server, "splitfed")
        assert "3" not in times and best in ("1", "2"), (device.name, best)  # cut 0 sends the raw samples
    dead_end = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Identity())
    with pytest.raises(ValueError, match="the part after the cut"):
        choose_cut(dead_end, (1, 8, 8), BATCH, 64, _profile("any"), server)


def test_population_choice_for_the_reported_config_is_not_the_flatten() -> None:
    """The user's run: default model, sl-ushape, {laptop = 2, raspberry-pi-4 = 2}."""
    from fedsplit.simulation.server_app import split_cuts

    cfg = load_config(None, ["training.mode=sl-ushape", "devices={laptop = 2, raspberry-pi-4 = 2}"])
    assert cfg.split.cut == "auto" and cfg.model.name == "cnn"
    population = Population(cfg.devices, builtin_profiles())
    cuts = split_cuts(cfg, population, resolve_profiles(cfg.profiles)[cfg.clock.server_profile])
    (cut,) = set(cuts.values())
    task = task_for(config_to_json(cfg))
    assert cut != "head.0,head.1" and _middle_works(task.model, parse_cut(cut), tuple(task.data.input_shape)), cut


def test_a_small_ushape_run_records_the_chosen_cut_and_the_server_computes(tmp_path) -> None:
    """2 rounds, 4 terminals, digits, cnn, split.cut = auto, serial engine (no Ray)."""
    from fedsplit.simulation.runner import simulate
    from tests.conftest import small_overrides

    cfg = load_config(None, small_overrides(tmp_path, **{"engine.name": "serial", "training.mode": "sl-ushape", "model.name": "cnn"}))
    assert cfg.split.cut == "auto"
    outcome = simulate(cfg)
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(outcome.summary))
    cut = summary["split_cut"]
    task = task_for(config_to_json(cfg))
    assert isinstance(cut, str) and cut.count(",") == 1 and cut != "head.0,head.1"
    assert _middle_works(task.model, parse_cut(cut), tuple(task.data.input_shape)), cut
    assert summary["server_flops"] > 0 and summary["server_s"] > 0 and summary["server_energy_j"] > 0
    with open(outcome.run_dir / "rounds.csv", newline="") as fh:
        rounds = list(csv.DictReader(fh))
    assert len(rounds) == 2 and all(int(r["server_flops"]) > 0 and float(r["server_s"]) > 0 for r in rounds)
    assert 'cut = "auto"' in (outcome.run_dir / "config.toml").read_text()  # the config keeps what was asked
    # the closing table shows the choice on one row
    out = io.StringIO()
    print_summary(summary, str(outcome.run_dir), Console(file=out, width=200))
    assert [line for line in out.getvalue().splitlines() if "split cut" in line and cut in line]


def test_a_federated_run_has_no_split_cut(tmp_path) -> None:
    from fedsplit.simulation.runner import simulate
    from tests.conftest import small_overrides

    outcome = simulate(load_config(None, small_overrides(tmp_path, rounds=1, **{"engine.name": "serial"})))
    assert "split_cut" not in outcome.summary
