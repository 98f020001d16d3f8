"""Split-learning settings are checked with the rest of the config, before any engine starts."""

from __future__ import annotations

import pytest

from fedsplit.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("mode", "cut", "message"),
    [
        ("splitfed-v1", "nope", "split.cut = 'nope': cut = 'nope': not a valid cut (allowed cuts: 0=features.0"),
        ("sl-ushape", "features.2", "takes 'a,b'"),
        ("sl-ushape", "features.2,features.1", "the first cut must come before the second"),
        ("sl-vanilla", "features.2,classifier.1", "takes one block name or index"),
        ("sl-wrong", "auto", "training.mode = 'sl-wrong': unknown (allowed: fl, sl-vanilla"),
    ],
)
def test_bad_split_settings_name_the_field(mode, cut, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"training.mode={mode}", "model.name=fedavg-cnn", f"split.cut={cut}"])
    assert message in str(info.value)


@pytest.mark.parametrize(("mode", "cut"), [("splitfed-v2", "'2'"), ("sl-ushape", "features.2,classifier.2"), ("sl-vanilla", "auto")])
def test_good_split_settings_load(mode, cut):
    cfg = load_config(None, [f"training.mode={mode}", "model.name=fedavg-cnn", f"split.cut={cut}", "split.noise_std=0.1"])
    assert cfg.training.mode == mode and cfg.split.cut == cut.strip("'")


def test_auto_without_a_cut_that_leaves_the_server_work_is_refused_before_the_run():
    # The MLP's two layers with parameters cannot be on the terminal's front and in the server's
    # middle at once: no U-shaped pair does both, so auto is refused with the cuts to name instead.
    with pytest.raises(ConfigError, match=r"split.cut = 'auto': model.name = 'mlp' has no pair of cuts .* \(cuts: net.0, net.1, net.2\)"):
        load_config(None, ["training.mode=sl-ushape", "model.name=mlp"])
    assert load_config(None, ["training.mode=sl-vanilla", "model.name=mlp"]).split.cut == "auto"  # net.1 or net.2: a Linear on each side
    assert load_config(None, ["training.mode=sl-ushape", "model.name=mlp", "split.cut='net.0,net.1'"]).split.cut == "net.0,net.1"


@pytest.mark.parametrize(
    ("mode", "extra", "message"),
    [
        ("splitfed-v1", "compression={uplink='topk', density=0.1}", "compression = {'uplink': 'topk', 'density': 0.1}: has no effect with training.mode = 'splitfed-v1'"),
        ("fedbuff", "compression={uplink='int8'}", "compression = {'uplink': 'int8'}: has no effect with training.mode = 'fedbuff'"),
        ("sl-vanilla", "strategy.params={proximal_mu=0.1}", "strategy.params = {'proximal_mu': 0.1}: has no effect with training.mode = 'sl-vanilla'"),
        ("gossip", "strategy.selection=fedcs", "strategy.selection = 'fedcs': has no effect with training.mode = 'gossip'"),
        ("splitfed-v2", "strategy.local_work=adaptive", "strategy.local_work = 'adaptive': has no effect with training.mode = 'splitfed-v2'"),
        ("splitfed-v1", "strategy.name=krum", "strategy.name = 'krum': has no effect with training.mode = 'splitfed-v1'"),
    ],
)
def test_settings_only_fl_reads_are_refused_with_other_modes(mode, extra, message):
    """A split or asynchronous run with ``compression`` sent every update dense, and the strategy's
    params, FedCS selection and adaptive local work were dropped, all without a word."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"training.mode={mode}", "model.name=mlp", "split.cut=net.1" if mode.startswith(("sl", "split")) else "seed=0", extra])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert load_config(None, ["model.name=mlp", extra]).training.mode == "fl"  # where they act


def test_a_teacher_is_refused_in_split_learning(tmp_path):
    """Split learning's loss is computed without the teacher: ``transfer.teacher`` was ignored."""
    import torch

    from fedsplit.models import build_model
    from fedsplit.models.checkpoint import model_meta, save_checkpoint

    teacher = save_checkpoint(tmp_path / "t.pt", build_model("mlp", (1, 8, 8), 10).state_dict(), {**model_meta("mlp", (1, 8, 8), 10, hidden=64, width=1.0), "dataset": "digits"})
    assert torch.load(teacher, weights_only=True)["meta"]["num_classes"] == 10
    with pytest.raises(ConfigError, match="transfer.teacher with training.mode = 'splitfed-v1': distillation acts in whole-model local training"):
        load_config(None, ["training.mode=splitfed-v1", "model.name=mlp", "split.cut=net.1", f"transfer.teacher='{teacher}'"])
    assert load_config(None, ["training.mode=fedbuff", "model.name=mlp", f"transfer.teacher='{teacher}'"]).transfer.teacher
