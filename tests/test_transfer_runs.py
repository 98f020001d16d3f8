"""Federated fine-tuning end to end on the in-process engine: what the ledger shows (bytes of only
the trainable tensors), the global model (frozen backbone + aggregated head), compression on top,
and split learning with a frozen terminal part."""

from __future__ import annotations

import pytest
import torch

from fedsplit.clients.app import make_client_app
from fedsplit.config import load_config
from fedsplit.learning import config_to_json
from fedsplit.learning import task as task_module
from fedsplit.simulation.engine import EngineGrid, SerialEngine
from fedsplit.simulation.server_app import RunSession, run_server
from fedsplit.transfer import read_checkpoint
from fedsplit.transfer.pretrain import pretrain

BASE = ["profiles={lab={base='laptop', availability=1.0}}", "devices={lab=2}", "train.local_epochs=1", "progress=false", "seed=5", "rounds=1", "model.name=mlp", "model.hidden=32"]


@pytest.fixture(scope="module")
def source_mlp(tmp_path_factory):
    cfg = load_config(None, BASE + ["data.classes='0-4'"])
    return pretrain(cfg, tmp_path_factory.mktemp("ckpt") / "mlp.pt", epochs=2).path


def run(*extra: str) -> RunSession:
    """One round on the in-process engine (real ClientApp and Flower messages, no Ray); the
    session's ``initial`` is the task's whole initial model."""
    cfg = load_config(None, BASE + ["data.classes='5-9'", *extra])
    session = RunSession.from_config(cfg)
    try:
        engine = SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)
        run_server(EngineGrid(engine), session)
        session.initial = task_module.task_for(config_to_json(cfg)).initial
    finally:
        task_module._TASKS.pop(config_to_json(cfg), None)
    return session


def train_bytes(session: RunSession) -> tuple[int, int]:
    rows = [r for r in session.ledger.rows if r.phase == "train" and r.status == "ok"]
    assert len(rows) == 2
    return sum(r.bytes_up for r in rows), sum(r.bytes_down for r in rows)


def test_finetuning_sends_fewer_bytes_and_keeps_the_backbone(source_mlp):
    pretrained = f"model.pretrained='{source_mlp}'"
    whole = run(pretrained)
    head = run(pretrained, "transfer.trainable='last:1'")
    squeezed = run(pretrained, "transfer.trainable='last:1'", "compression={uplink='int8'}")
    up_whole, down_whole = train_bytes(whole)
    up_head, down_head = train_bytes(head)
    up_squeezed, _ = train_bytes(squeezed)
    # mlp 64-32-5: 2,245 parameters (8,980 bytes), the head 165 (660 bytes), plus each message's
    # framing: the ledger shows the drop both ways
    assert up_whole > 8 * up_head and down_whole > 8 * down_head
    # two messages each way, each without the 2,080 frozen float32 values (and their array headers)
    assert up_whole - up_head > 2 * 4 * (2245 - 165) and down_whole - down_head > 2 * 4 * (2245 - 165)
    assert up_squeezed < up_head  # compression applies to what travels
    ckpt = read_checkpoint(source_mlp).state_dict
    for session in (head, squeezed):
        final = session.final_state
        assert list(final) == list(ckpt)  # the checkpoint is the whole model
        assert torch.equal(final["net.1.weight"], ckpt["net.1.weight"])  # the frozen backbone
        assert not torch.equal(final["net.3.weight"], session.initial["net.3.weight"])  # a trained head
        assert "accuracy" in session.ledger.rounds[1].metrics


def test_split_learning_with_a_frozen_terminal_part(source_mlp):
    session = run(
        f"model.pretrained='{source_mlp}'", "transfer.trainable='net.3'", "training.mode=splitfed-v1", "split.cut=net.2"
    )
    rows = [r for r in session.ledger.rows if r.phase == "train"]
    assert rows and all(r.status == "ok" for r in rows)
    ckpt = read_checkpoint(source_mlp).state_dict
    final = session.final_state
    assert torch.equal(final["net.1.weight"], ckpt["net.1.weight"]) and torch.equal(final["net.1.bias"], ckpt["net.1.bias"])
    assert not torch.equal(final["net.3.weight"], session.initial["net.3.weight"])
    # the terminal's part is never sent: its replies carry activations and labels, the server's
    # messages no gradient; bytes down per batch are the bare 'step' framing
    unfrozen = run(f"model.pretrained='{source_mlp}'", "transfer.trainable='all'", "training.mode=splitfed-v1", "split.cut=net.2")
    down_frozen = sum(r.bytes_down for r in rows)
    down_unfrozen = sum(r.bytes_down for r in unfrozen.ledger.rows if r.phase == "train")
    assert down_frozen < down_unfrozen / 2

