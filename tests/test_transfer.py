"""Transfer learning and distillation (issue #12 items 1-3): checkpoints, freezing, what travels,
FLOPs of frozen layers, the distillation loss, and the ClientApp on real Flower messages."""

from __future__ import annotations

import re

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedsplit.clients import app as client_app
from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.config import ConfigError, load_config
from fedsplit.learning import config_to_json, task_for
from fedsplit.learning import task as task_module
from fedsplit.learning.task import Task, TravellingKeysError
from fedsplit.models import build_model, step_flops
from fedsplit.simulation.engine import run_client_app
from fedsplit.transfer import (
    CheckpointError,
    apply_freezing,
    distillation_loss,
    kd_term,
    load_pretrained,
    model_from_checkpoint,
    plan_freezing,
    read_checkpoint,
    save_checkpoint,
)
from fedsplit.transfer.pretrain import distill_student, pretrain

BASE = ["devices={laptop=2}", "train.local_epochs=1", "progress=false", "seed=3"]


@pytest.fixture(scope="module")
def source_cnn(tmp_path_factory):
    """A compact CNN (width 0.25) pretrained for two epochs on digits 0-4 (the source task)."""
    out = tmp_path_factory.mktemp("ckpt") / "src.pt"
    cfg = load_config(None, BASE + ["model.name=cnn", "model.width=0.25", "data.classes='0-4'"])
    return pretrain(cfg, out, epochs=2).path


def _config(*extra: str):
    return load_config(None, BASE + list(extra))


@pytest.fixture
def frozen_json(source_cnn):
    """A run fine-tuning the pretrained CNN's head on digits 5-9 (only the head travels)."""
    cfg = _config("model.name=cnn", "model.width=0.25", "data.classes='5-9'", f"model.pretrained='{source_cnn}'", "transfer.trainable='last:1'")
    text = config_to_json(cfg)
    yield text
    task_module._TASKS.pop(text, None)


def _context(pid: int = 0) -> Context:
    return Context(run_id=1, node_id=pid + 1, node_config={"partition-id": pid, "num-partitions": 2}, state=RecordDict(), run_config={})


def _train_message(state: dict[str, torch.Tensor]) -> Message:
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    content = RecordDict({"arrays": array_record_from_state(state), "config": ConfigRecord({"server-round": 1})})
    msg = Message(content, dst_node_id=1, message_type="train", group_id="1")
    msg.metadata.__dict__["_message_id"] = "m"
    return msg


# ------------------------------------------------------------------------------ checkpoints


def test_pretrain_checkpoint_round_trip(source_cnn, tmp_path):
    ckpt = read_checkpoint(source_cnn)
    meta = ckpt.meta
    assert (meta["model"], meta["input_shape"], meta["num_classes"], meta["classes"]) == ("cnn", [1, 8, 8], 5, [0, 1, 2, 3, 4])
    assert meta["dataset"] == "digits" and 0.2 < meta["test_accuracy"] <= 1.0 and meta["train_flops"] > 0
    model = model_from_checkpoint(ckpt)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt.state_dict[key])
    # a plain state_dict (a torchvision weights file, torch.save(model.state_dict())) loads too
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    fresh = build_model("cnn", (1, 8, 8), 5, width=0.25, seed=9)
    assert load_pretrained(fresh, plain) == []
    assert all(torch.equal(v, ckpt.state_dict[k]) for k, v in fresh.state_dict().items())


def test_head_reinitialised_when_the_classes_differ(source_cnn, caplog):
    ckpt = read_checkpoint(source_cnn)
    same_shape = build_model("cnn", (1, 8, 8), 5, width=0.25, seed=1)
    init_head = same_shape.head[2].weight.detach().clone()
    with caplog.at_level("INFO", logger="fedsplit"):
        reset = load_pretrained(same_shape, ckpt, target={"dataset": "digits", "classes": [5, 6, 7, 8, 9]})
    assert reset == ["head.2.weight", "head.2.bias"]
    assert torch.equal(same_shape.head[2].weight, init_head)  # the fresh head, not the checkpoint's
    assert torch.equal(same_shape.stem[0].weight, ckpt.state_dict["stem.0.weight"])  # the backbone is
    assert "head re-initialised" in caplog.text and "[5, 6, 7, 8, 9]" in caplog.text
    # the task it was made for: the head is kept; 10 classes: re-initialised for its shape
    kept = build_model("cnn", (1, 8, 8), 5, width=0.25, seed=1)
    assert load_pretrained(kept, ckpt, target={"dataset": "digits", "classes": [0, 1, 2, 3, 4]}) == []
    ten = build_model("cnn", (1, 8, 8), 10, width=0.25, seed=1)
    assert load_pretrained(ten, ckpt) == ["head.2.weight", "head.2.bias"]


def test_mismatched_checkpoint_names_the_tensors(tmp_path):
    small = build_model("mlp", (1, 8, 8), 10, hidden=32)
    path = save_checkpoint(tmp_path / "mlp32.pt", small.state_dict(), {"model": "mlp"})
    with pytest.raises(CheckpointError) as err:
        load_pretrained(build_model("mlp", (1, 8, 8), 10, hidden=64), path)
    text = str(err.value)
    assert "mlp32.pt" in text and "made for model 'mlp'" in text
    assert "shape of net.1.weight is (32, 64) in the checkpoint, (64, 64) in the model" in text
    with pytest.raises(CheckpointError, match="missing stem.0.weight.*unexpected net.1.weight"):
        load_pretrained(build_model("cnn", (1, 8, 8), 10), path)
    bad = tmp_path / "notes.pt"
    bad.write_text("not weights")
    with pytest.raises(CheckpointError, match="cannot be read as torch weights"):
        read_checkpoint(bad)
    with pytest.raises(ConfigError, match="model.pretrained = .*no such file"):
        _config("model.pretrained='missing.pt'")


# -------------------------------------------------------------------------------- freezing


def test_trainable_specs_and_config_errors():
    model = build_model("cnn", (1, 8, 8), 10)
    plan = plan_freezing(model, "last:2")
    assert plan.travelling[0].startswith("stages.2.") and plan.travelling[-2:] == ("head.2.weight", "head.2.bias")
    assert plan_freezing(model, "head").travelling == ("head.2.weight", "head.2.bias")
    norms = plan_freezing(model, "batchnorm,head").trainable  # every BatchNorm layer's affine weights
    assert len(norms) == 2 * 9 + 2 and "stages.1.shortcut.1.weight" in norms and "stem.0.weight" not in norms
    assert plan_freezing(model, "all") is None
    local = plan_freezing(model, "last:1", "local")
    assert "stem.1.running_mean" in local.local and not set(local.local) & set(local.travelling)
    shared = plan_freezing(model, "last:1", "global")  # statistics travel (and are averaged), in model order
    assert shared.local == () and shared.trainable == ("head.2.weight", "head.2.bias")
    assert shared.travelling[:3] == ("stem.1.running_mean", "stem.1.running_var", "stem.1.num_batches_tracked")
    assert shared.travelling[-2:] == ("head.2.weight", "head.2.bias") and len(shared.travelling) == 2 + 3 * 9
    with pytest.raises(ConfigError, match=r"transfer.trainable = 'last:7': N must be an integer in 1..6"):
        _config("transfer.trainable='last:7'")
    with pytest.raises(ConfigError, match="no module 'trunk'"):
        _config("transfer.trainable='trunk'")


def test_flops_smaller_with_frozen_layers():
    model = build_model("cnn", (1, 8, 8), 10)
    full = step_flops(model, (1, 8, 8), 16)
    forward = step_flops(model, (1, 8, 8), 16, train=False)
    apply_freezing(model, plan_freezing(model, "last:2").trainable)
    two = step_flops(model, (1, 8, 8), 16)
    apply_freezing(model, plan_freezing(model, "last:1").trainable)
    head = step_flops(model, (1, 8, 8), 16)  # the same architecture: the cache tells them apart
    assert forward < head < two < full
    # only the head trains: forward + the head's weight gradient (64 x 10 x 16 MACs = 2 FLOPs each)
    assert head - forward == 2 * 64 * 10 * 16
    apply_freezing(model, [n for n, _ in model.named_parameters()])
    assert step_flops(model, (1, 8, 8), 16) == full


# ------------------------------------------------------------------ the ClientApp, real messages


def test_finetune_sends_only_trainable_keys_and_keeps_the_backbone(frozen_json, source_cnn):
    task = task_for(frozen_json)
    assert task.travelling == ("head.2.weight", "head.2.bias")
    ckpt = read_checkpoint(source_cnn).state_dict
    app = client_app.make_client_app(mods=[], config_json=frozen_json)
    context = _context()
    msg = _train_message(task.initial_state())
    assert list(msg.content.array_records["arrays"]) == ["head.2.weight", "head.2.bias"]
    reply, _, _ = run_client_app(app, msg, context)
    assert not reply.has_error(), reply.error
    sent = record_views(reply.content.array_records["arrays"])
    assert list(sent) == ["head.2.weight", "head.2.bias"]
    assert not torch.equal(torch.from_numpy(sent["head.2.weight"].copy()), task.initial["head.2.weight"])  # it trained
    state = task.model.state_dict()
    for key in ckpt:
        if not key.startswith("head."):  # backbone and BatchNorm statistics: as pretrained
            assert torch.equal(state[key].cpu(), ckpt[key]), key


def test_a_message_with_other_tensors_is_refused(frozen_json):
    task = task_for(frozen_json)
    app = client_app.make_client_app(mods=[], config_json=frozen_json)
    whole = task.full_state(task.initial_state())
    reply, _, _ = run_client_app(app, _train_message(whole), _context())
    assert reply.has_error()
    assert "sends exactly 2" in reply.error.reason and "unexpected ['stem.0.weight'" in reply.error.reason
    with pytest.raises(TravellingKeysError, match=r"missing \['head.2.bias'\]"):
        task.check_travelling(["head.2.weight"])


def test_local_batchnorm_statistics_stay_on_the_terminal(source_cnn):
    cfg = _config("model.name=cnn", "model.width=0.25", "data.classes='5-9'", f"model.pretrained='{source_cnn}'",
                  "transfer.trainable='last:1'", "transfer.batchnorm=local")
    text = config_to_json(cfg)
    try:
        task = task_for(text)
        app = client_app.make_client_app(mods=[], config_json=text)
        context = _context()
        reply, _, _ = run_client_app(app, _train_message(task.initial_state()), context)
        assert list(reply.content.array_records["arrays"]) == ["head.2.weight", "head.2.bias"]
        kept = record_views(context.state.array_records[client_app.BATCHNORM_LOCAL_STATE])
        assert "stem.1.running_mean" in kept
        assert not torch.allclose(torch.from_numpy(kept["stem.1.running_mean"].copy()), task.initial["stem.1.running_mean"])
    finally:
        task_module._TASKS.pop(text, None)


def test_teacher_adds_its_forward_flops(source_cnn, tmp_path):
    def train_flops(*extra: str) -> int:
        cfg = _config("model.name=mlp", "data.classes='0-4'", *extra)
        text = config_to_json(cfg)
        try:
            task = task_for(text)
            reply, _, _ = run_client_app(client_app.make_client_app(mods=[], config_json=text), _train_message(task.initial_state()), _context())
            assert not reply.has_error(), reply.error
            return int(reply.content.metric_records["metrics"]["flops"]), len(task.data.partition(0)[0])
        finally:
            task_module._TASKS.pop(text, None)

    plain, n = train_flops()
    taught, _ = train_flops(f"transfer.teacher='{source_cnn}'")
    teacher = model_from_checkpoint(source_cnn)
    batches = [32] * (n // 32) + ([n % 32] if n % 32 else [])
    assert taught - plain == sum(step_flops(teacher, (1, 8, 8), b, train=False) for b in batches)


def test_a_teacher_of_other_classes_is_refused_when_the_config_loads(source_cnn, tmp_path):
    """A teacher of digits 0-4 for a task of digits 5-9 has as many outputs as the task, but its
    output i means another class: it was accepted and the KL term taught wrong labels (a run at
    alpha = 1 ended at 0.26 accuracy instead of 0.95); a teacher of 5 outputs for 10 classes
    failed on every terminal, in every round, instead of when the configuration was loaded."""
    with pytest.raises(ConfigError, match=r"transfer.teacher = .*outputs are digits classes \[0, 1, 2, 3, 4\], the task's .*\[5, 6, 7, 8, 9\]"):
        _config("model.name=mlp", "data.classes='5-9'", f"transfer.teacher='{source_cnn}'")
    with pytest.raises(ConfigError, match=r"transfer.teacher = .*the teacher has 5 outputs, the task \(data.name = 'digits'\) 10 classes"):
        _config("model.name=mlp", f"transfer.teacher='{source_cnn}'")
    plain = tmp_path / "plain.pt"
    torch.save(model_from_checkpoint(source_cnn).state_dict(), plain)
    with pytest.raises(ConfigError, match="transfer.teacher = .*a plain state_dict without model metadata"):
        _config("model.name=mlp", "data.classes='0-4'", f"transfer.teacher='{plain}'")
    assert _config("model.name=mlp", "data.classes='0-4'", f"transfer.teacher='{source_cnn}'").transfer.teacher


# ---------------------------------------------------------------------------- distillation


def test_distillation_loss_and_temperature():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    assert float(kd_term(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(student, y)
    assert torch.allclose(distillation_loss(student, teacher, y, temperature=2.0, alpha=0.0), ce)
    assert torch.allclose(distillation_loss(student, teacher, y, temperature=2.0, alpha=1.0), kd_term(student, teacher, 2.0))
    mixed = distillation_loss(student, teacher, y, temperature=2.0, alpha=0.3)
    assert torch.allclose(mixed, 0.7 * ce + 0.3 * kd_term(student, teacher, 2.0))
    # a higher temperature softens both distributions: the KL itself (T^2 taken out) shrinks
    kls = [float(kd_term(student, teacher, t)) / t**2 for t in (1.0, 2.0, 4.0, 8.0)]
    assert kls == sorted(kls, reverse=True) and kls[-1] < kls[0] / 10
    # and T^2 keeps the gradient's scale: at large T it tends to the logit-matching gradient / K
    s = student.clone().requires_grad_(True)
    kd_term(s, teacher, 50.0).backward()
    centred = (student - student.mean(1, keepdim=True)) - (teacher - teacher.mean(1, keepdim=True))
    assert torch.allclose(s.grad, centred / (5 * 8), atol=2e-3)
    with pytest.raises(ValueError, match="temperature"):
        kd_term(student, teacher, 0.0)


def test_server_side_distillation_on_unlabeled_data(source_cnn, tmp_path):
    cfg = _config("model.name=mlp", "model.hidden=16", "data.classes='0-4'")
    result = distill_student(cfg, source_cnn, tmp_path / "student.pt", epochs=2, temperature=4.0)
    meta = read_checkpoint(result.path).meta
    assert meta["made_by"] == "distill" and meta["classes"] == [0, 1, 2, 3, 4] and meta["num_classes"] == 5
    # the student learnt the teacher's task from inputs alone: well above chance (0.2)
    assert meta["test_accuracy"] > 0.5 and meta["train_flops"] > 0


def test_pretrain_command(tmp_path, capsys):
    from fedsplit.cli import main

    out = tmp_path / "mlp.pt"
    code = main(["pretrain", "--set", "model.name=mlp", "--set", "data.classes=0-4", "--epochs", "1", "--out", str(out)])
    line = capsys.readouterr().out.strip()
    assert code == 0 and out.is_file()
    assert line.startswith(f"checkpoint={out} made_by=pretrain model=mlp input_shape=1x8x8 dataset=digits classes=0,1,2,3,4 test_acc=")
    assert main(["pretrain", "--distill-from", str(tmp_path / "none.pt"), "--out", str(tmp_path / "s.pt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_task_rebuilds_the_whole_model_from_what_travels(frozen_json):
    task: Task = task_for(frozen_json)
    head = {k: torch.zeros_like(v) for k, v in task.initial_state().items()}
    full = task.full_state(head)
    assert list(full) == list(task.initial) and torch.equal(full["head.2.bias"], head["head.2.bias"])
    assert torch.equal(full["stem.0.weight"], task.initial["stem.0.weight"])
    assert isinstance(ArrayRecord(task.initial_state()), ArrayRecord)


def test_torchvision_weights_on_disk_load_into_a_tv_model(tmp_path):
    import torchvision

    source = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)  # as a weights file on disk
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("tv:resnet18", (3, 32, 32), 10, seed=0)
    assert load_pretrained(model, tmp_path / "resnet18.pth") == ["fc.weight", "fc.bias"]  # 1000 -> 10 classes
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


# ------------------------------------------------------------------------------ pretrain: input checks, progress
BAD_NUMBERS = [
    ("--lr", "0", "--lr 0: must be a finite number > 0"),  # was taken as "no --lr": trained with train.lr
    ("--lr", "nan", "--lr nan: must be a finite number > 0"),  # trained, and wrote a checkpoint of NaNs
    ("--lr", "inf", "--lr inf: must be a finite number > 0"),
    ("--lr", "-0.1", "--lr -0.1: must be a finite number > 0"),  # a traceback from torch.optim.SGD
    ("--batch-size", "0", "--batch-size 0: must be an integer >= 1"),  # was taken as train.batch_size
    ("--batch-size", "-5", "--batch-size -5: must be an integer >= 1"),  # a traceback
    ("--epochs", "0", "--epochs 0: must be an integer >= 1"),
    ("--temperature", "nan", "--temperature nan: must be a finite number > 0"),  # nan <= 0 is False: distilled with NaN
    ("--temperature", "0", "--temperature 0: must be a finite number > 0"),
]


@pytest.mark.parametrize(("flag", "value", "message"), BAD_NUMBERS, ids=[f"{f}={v}" for f, v, _ in BAD_NUMBERS])
def test_pretrain_command_refuses_numbers_out_of_range_in_one_line(tmp_path, fedsplit_main, flag, value, message):
    out = tmp_path / "p.pt"
    run = fedsplit_main("pretrain", "--set", "model.name=mlp", "--epochs", "1", "--out", str(out), flag, value)
    assert run.returncode == 2 and run.stderr == f"fedsplit pretrain: error: {message}\n" and run.stdout == ""
    assert not out.exists()


def test_pretrain_and_distill_refuse_numbers_out_of_range_before_loading_data(source_cnn, tmp_path, monkeypatch):
    """The library functions check what the command checks (for Python callers), naming the parameter."""
    import fedsplit.transfer.pretrain as module

    monkeypatch.setattr(module, "_source", lambda cfg: pytest.fail("data loaded before the check"))
    cfg = _config("model.name=mlp")
    out = tmp_path / "p.pt"
    for kwargs, message in [
        ({"epochs": 1, "lr": 0.0}, "lr = 0.0: must be a finite number > 0"),
        ({"epochs": 1, "lr": float("nan")}, "lr = nan: must be a finite number > 0"),
        ({"epochs": 1, "lr": -0.1}, "lr = -0.1: must be a finite number > 0"),
        ({"epochs": 1, "batch_size": 0}, "batch_size = 0: must be an integer >= 1"),
        ({"epochs": 1, "batch_size": 2.5}, "batch_size = 2.5: must be an integer >= 1"),
        ({"epochs": 0}, "epochs = 0: must be an integer >= 1"),
        ({"epochs": True}, "epochs = True: must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            pretrain(cfg, out, **kwargs)
        with pytest.raises(ValueError, match=re.escape(message)):
            distill_student(cfg, source_cnn, out, temperature=4.0, **kwargs)
    with pytest.raises(ValueError, match=re.escape("temperature = nan: must be a finite number > 0")):
        distill_student(cfg, source_cnn, out, epochs=1, temperature=float("nan"))
    assert not out.exists()


def test_pretrain_prints_a_line_per_epoch_and_refuses_to_write_a_diverged_model(tmp_path, fedsplit_main):
    small = ["--set", "model.name=mlp", "--set", "model.hidden=16", "--set", "data.classes=0-4"]
    out = tmp_path / "p.pt"
    run = fedsplit_main("pretrain", *small, "--epochs", "2", "--lr", "0.05", "--out", str(out))
    lines = run.stderr.splitlines()
    assert run.returncode == 0 and out.is_file() and len(lines) == 2, run.stderr
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert re.fullmatch(r"epoch 2/2: loss=\d+\.\d{4} \d+\.\d\ds \(total \d+\.\ds\)", lines[1])
    quiet = fedsplit_main("pretrain", *small, "--set", "progress=false", "--epochs", "1", "--out", str(tmp_path / "q.pt"))
    assert quiet.returncode == 0 and quiet.stderr == ""
    # an lr so large that the loss ends NaN: no checkpoint of NaNs, one line saying so
    diverged = fedsplit_main("pretrain", *small, "--set", "progress=false", "--epochs", "1", "--lr", "1e30", "--out", str(tmp_path / "nan.pt"))
    assert diverged.returncode == 2 and not (tmp_path / "nan.pt").exists()
    assert diverged.stderr.startswith("fedsplit pretrain: error: pretraining diverged: its loss is nan") and diverged.stderr.count("\n") == 1


def test_epoch_progress_does_not_change_the_training(tmp_path):
    cfg = _config("model.name=mlp", "model.hidden=16", "data.classes='0-4'")
    seen: list[tuple[int, float, float]] = []
    a = pretrain(cfg, tmp_path / "a.pt", epochs=2, on_epoch=lambda *report: seen.append(report))
    b = pretrain(cfg, tmp_path / "b.pt", epochs=2)
    assert [epoch for epoch, _, _ in seen] == [1, 2] and all(seconds >= 0 for _, _, seconds in seen)
    wa, wb = read_checkpoint(a.path).state_dict, read_checkpoint(b.path).state_dict
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_pretrained_checkpoint_of_another_architecture_is_refused_before_a_run_folder(source_cnn, tmp_path, fedsplit_main):
    """A CNN checkpoint as model.pretrained of an MLP run: it used to fail with a traceback once
    the run had made its folder; now the configuration is refused in one line."""
    with pytest.raises(ConfigError, match=r"model.pretrained = .*made for model 'cnn', but model.name = 'mlp'"):
        _config("model.name=mlp", f"model.pretrained='{source_cnn}'")
    run = fedsplit_main("simulate", "--set", "model.name=mlp", "--set", f"model.pretrained={source_cnn}",
                        "--set", f"out_dir={tmp_path / 'runs'}", "--set", "engine.name=serial")
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "made for model 'cnn'" in run.stderr
    assert not (tmp_path / "runs").exists()


def test_the_config_check_maps_the_checkpoint_and_the_task_reads_it(source_cnn, tmp_path, monkeypatch):
    """Loading a config looks at model.pretrained's metadata through a memory map (its tensors are
    not read then: a large backbone is read once, by the task); a file in torch's legacy format,
    which cannot be mapped, is checked and loaded all the same."""
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("mmap", False))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    cfg = _config("model.name=cnn", "model.width=0.25", "data.classes='0-4'", f"model.pretrained='{source_cnn}'")
    assert loads == [True]
    legacy = tmp_path / "legacy.pt"
    torch.save(real_load(source_cnn, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    loads.clear()
    cfg = _config("model.name=cnn", "model.width=0.25", "data.classes='0-4'", f"model.pretrained='{legacy}'")
    assert loads == [True, False]  # the map refused, the file read
    task = task_module.Task.from_config(cfg)
    expected = read_checkpoint(source_cnn).state_dict
    assert all(torch.equal(task.initial[k], v) for k, v in expected.items())
