"""fedsplit pipeline: configuration checks, and a tiny family trained end to end."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fedsplit.config import ConfigError, dump_config
from fedsplit.pipeline import load_pipeline, pipeline_from_dict
from fedsplit.pipeline.run import teacher_checkpoint
from tests.conftest import REPO

SMOKE = """
name = "smoke"
out_dir = "{out}"
[base]
rounds = 1
devices = {{raspberry-pi-4 = 2, laptop = 2}}
progress = false
train = {{local_epochs = 1}}
[family]
architecture = "cnn"
sizes = [[5, 0.25], [8, 0.5]]
pruned = [{{from = "cnn-8px-w0.5", amount = 0.5, finetune_epochs = 0}}]
int8 = [{{from = "cnn-8px-w0.5", calibration_samples = 64}}]
[catalog]
latency_repeats = 3
[scenario]
devices = {{raspberry-pi-4 = 2, laptop = 2}}
accuracy_target = 0.0
"""


def smoke_tree(tmp_path) -> dict:
    import tomllib

    return tomllib.loads(SMOKE.format(out=tmp_path))


def test_the_shipped_example_validates(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # its base_config is found beside it, from any working directory
    cfg = load_pipeline(REPO / "experiments/configs/pipeline.toml")
    assert [m.name for m in cfg.members] == ["cnn-5px-w0.125", "cnn-8px-w0.125", "cnn-8px-w0.25", "cnn-8px-w1"]
    assert [d.member for d in cfg.distilled] == ["cnn-8px-w0.125-kd"] and cfg.distilled[0].teacher == "cnn-8px-w1"
    assert [p.member for p in cfg.pruned] == ["cnn-8px-w1-pruned80"] and [q.member for q in cfg.int8] == ["cnn-8px-w1-int8"]
    member = cfg.member_config(cfg.members[0], "runs/x")
    assert (member.rounds, member.data.resolution, member.model.width, member.run_name) == (15, 5, 0.125, "cnn-5px-w0.125")
    assert member.strategy.name == "fedavg" and member.num_terminals == 10  # from base_config


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.update(colour="red"), "unknown key 'colour'"),
        (lambda t: t["family"].update(sizes=[[8]]), "family.sizes[0] = [8]"),
        (lambda t: t["family"].update(sizes=[[8, 0]]), "family.sizes[0][1] = 0: must be > 0"),
        (lambda t: t["family"].update(sizes=[[8, 1], [8, 1.0]]), "appears twice"),
        (lambda t: t["family"].update(architecture="mlp"), "has no width knob"),
        (lambda t: t["family"]["pruned"][0].update({"from": "cnn-9px-w1"}), "family.pruned[0].from = 'cnn-9px-w1': not a member defined before it"),
        (lambda t: t["family"]["pruned"][0].update(amount=1.0), "family.pruned[0].amount = 1.0: must be < 1"),
        (lambda t: t["family"].update(distilled=[{"size": [8, 0.25], "teacher": "cnn-8px-w9"}]), "family.distilled[0].teacher = 'cnn-8px-w9': not a member of family.sizes"),
        (lambda t: t["family"].update(distilled=[{"size": [5, 0.125], "teacher": "cnn-8px-w0.5"}]), "family.distilled[0].size[0] = 5: must be the teacher's resolution (8)"),
        (lambda t: t["scenario"].update(devices={"toaster": 2}), "scenario.devices.toaster = 2: unknown device profile"),
        (lambda t: t["scenario"].update(accuracy_target="high"), "scenario.accuracy_target = 'high'"),
        (lambda t: t["base"].update(rounds=0), "pipeline: base: config: rounds = 0"),
        (lambda t: t.update(schedule={"solver": "magic"}), "schedule.solver = 'magic': unknown"),
    ],
)
def test_bad_pipeline_configs_name_the_field(tmp_path, change, message):
    tree = smoke_tree(tmp_path)
    change(tree)
    with pytest.raises(ConfigError) as info:
        pipeline_from_dict(tree)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_trained_member_becomes_a_teacher_checkpoint(small_family, tmp_path):
    from fedsplit.learning import Task
    from fedsplit.report.members import load_member, read_run_config
    from fedsplit.models.checkpoint import model_from_checkpoint

    path = teacher_checkpoint(small_family["large"], tmp_path / "teachers" / "cnn-8px-w0.5.pt")
    teacher = model_from_checkpoint(path)  # what transfer.teacher loads
    member = load_member(small_family["large"])
    x = member.task.data.server_test.x[:16]
    with torch.no_grad():
        assert torch.equal(teacher(x), member.model(x))
    cfg = read_run_config(small_family["small"])
    cfg.transfer.teacher = str(path)
    assert Task.from_config(cfg).teacher() is not None  # a student's task accepts it
    cfg.run_name = "student"
    folder = tmp_path / "student"
    (folder / "checkpoints").mkdir(parents=True)
    dump_config(cfg, folder / "config.toml")
    torch.save(Task.from_config(cfg).model.state_dict(), folder / "checkpoints" / "final.pt")
    loaded = load_member(folder)  # a run trained with it is catalogued as distilled from it
    assert (loaded.kind, loaded.info["parent"]) == ("distilled", "cnn-8px-w0.5")


@pytest.mark.slow
def test_tiny_family_runs_end_to_end(tmp_path, ray_session, fedsplit_main):
    path = tmp_path / "pipeline.toml"
    path.write_text(SMOKE.format(out=tmp_path))
    proc = fedsplit_main("pipeline", "--config", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "smoke"
    assert f"pipeline_dir={folder}" in proc.stdout
    for name in ("catalog.json", "scenario.json", "schedule.json", "serve.json", "report.md", "family.csv",
                 "terminals.csv", "pipeline.toml", "plots/family_accuracy_flops.png", "plots/schedule_by_device.png"):
        assert (folder / name).is_file(), name
    catalog = json.loads((folder / "catalog.json").read_text())
    names = {m["name"]: m for m in catalog["models"]}
    assert set(names) == {"cnn-5px-w0.25", "cnn-8px-w0.5", "cnn-8px-w0.5-pruned50", "cnn-8px-w0.5-int8"}
    assert names["cnn-8px-w0.5-pruned50"]["nonzero_params"] < names["cnn-8px-w0.5"]["nonzero_params"]
    for member in ("cnn-5px-w0.25", "cnn-8px-w0.5"):  # trained federatedly: simulate's run folders
        run = folder / "members" / member
        assert (run / "rounds.csv").is_file() and (run / "clients.csv").is_file()
    scenario = json.loads((folder / "scenario.json").read_text())
    assert [t["device"] for t in scenario["terminals"]] == ["raspberry-pi-4"] * 2 + ["laptop"] * 2
    serve = json.loads((folder / "serve.json").read_text())
    assert serve["feasible"] is True and abs(serve["accuracy_gap_pp"]) <= 1.0
    assert serve["max_latency_rel_diff"] < 1e-9
    with (folder / "terminals.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["device"] for r in rows] == ["raspberry-pi-4"] * 2 + ["laptop"] * 2
    report = (folder / "report.md").read_text()
    assert "## Model family" in report and "| cnn-5px-w0.25 | trained | 1x5x5 |" in report and "## Serving" in report


def test_a_diverging_pretraining_stops_the_pipeline_in_one_line(tmp_path, fedsplit_main):
    tree = SMOKE.format(out=tmp_path).replace("[base]\n", '[base]\nengine = {name = "serial"}\n')
    tree += '[pretrain]\nepochs = 1\nset = {train = {lr = 1e30}}\n'
    path = tmp_path / "pipeline.toml"
    path.write_text(tree)
    proc = fedsplit_main("pipeline", "--config", str(path))
    assert proc.returncode == 3
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedsplit pipeline: error: pretraining: ") and "diverged" in last and "no checkpoint written" in last
    assert not list(tmp_path.glob("smoke/pretrained/*.pt"))
