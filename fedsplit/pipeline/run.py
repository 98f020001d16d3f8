"""``fedsplit pipeline``: from federated training to serving, in one run folder.

Steps (each writes into ``<out_dir>/<name>/``):

1. optional central pretraining of each member on a source task (:func:`fedsplit.transfer.pretrain.pretrain`,
   ``pretrained/<member>.pt``); the member then starts from it (``model.pretrained``);
2. federated training of every family member with the caller's ``train`` function (``fedsplit
   simulate`` for the command), ``members/<member>/``;
3. distilled members: trained federatedly like the others, with a trained member as teacher
   (``transfer.teacher``, its checkpoint in ``teachers/``); then derived members: pruned +
   fine-tuned, int8 (:mod:`fedsplit.report.members`), ``members/<name>/``;
4. ``catalog.json`` (:mod:`fedsplit.report.catalog`, validated by the shipped schema);
5. ``scenario.json``: terminals by device class (:func:`fedsplit.inference.device_scenario.device_scenario`),
   the catalog's models;
6. ``schedule.json``: the scheduler's solution (:func:`fedsplit.inference.solve.solve`, as ``fedsplit schedule``);
7. ``serve.json``: serving the schedule (:func:`fedsplit.serving.serve_sim.serve`);
8. ``report.md``, ``family.csv``, ``terminals.csv`` and ``plots/`` (:mod:`fedsplit.pipeline.report`).

The core imports neither Flower nor Ray: the training step is the ``train`` argument.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomli_w

from fedsplit.config import RunConfig, config_from_dict
from fedsplit.devices import resolve_profiles
from fedsplit.inference.catalog import CatalogCosts
from fedsplit.inference.device_scenario import device_scenario
from fedsplit.inference.paper_scenario import PaperScenarioConfig
from fedsplit.inference.scenario import problem_to_dict
from fedsplit.serving.serve_sim import serve
from fedsplit.inference.solve import solve
from fedsplit.models.family import merge_tree
from fedsplit.pipeline.config import PipelineConfig
from fedsplit.pipeline.result import PipelineResult
from fedsplit.report.catalog import write_catalog
from fedsplit.report.members import derive_int8, derive_pruned

#: Trains one member's configuration and returns its run folder.
Trainer = Callable[[RunConfig], Path]


def fresh_folder(out_dir: str | Path, name: str) -> Path:
    """``out_dir/name``, or ``name-1``, ``name-2``, ... if it exists and is not empty; created."""
    path = Path(out_dir) / name
    suffix = 1
    while path.exists() and any(path.iterdir()):
        path = Path(out_dir) / f"{name}-{suffix}"
        suffix += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def accuracy_target(spec: float | str, catalog: dict[str, Any]) -> float:
    """The scenario's accuracy target: a number, or ``midpoint`` of the catalog's accuracies."""
    if spec != "midpoint":
        return float(spec)
    accuracies = [m["accuracy"] for m in catalog["models"]]
    return (min(accuracies) + max(accuracies)) / 2


def teacher_checkpoint(member_dir: Path, out: Path) -> Path:
    """A trained member as a ``fedsplit pretrain``-format checkpoint (weights + model metadata),
    the form ``transfer.teacher`` reads."""
    from fedsplit.report.members import load_member
    from fedsplit.models.checkpoint import model_meta, save_checkpoint

    member = load_member(member_dir)
    m = member.cfg.model
    meta = model_meta(m.name, member.input_shape, member.task.data.num_classes, hidden=m.hidden, width=m.width)
    meta.update({"dataset": member.cfg.data.name, "member": member.name, "made_by": "fedsplit pipeline"})
    return save_checkpoint(out, member.float_model.state_dict(), meta)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def run_pipeline(cfg: PipelineConfig, train: Trainer, *, log: Callable[[str], None] = print) -> PipelineResult:
    """Run every step (see the module docstring) and return what they produced.

    Parameters
    ----------
    cfg : PipelineConfig
        A validated pipeline configuration.
    train : callable
        ``train(run_config) -> run folder``: trains one member federatedly (``fedsplit simulate``).
    log : callable
        Receives one ``key=value`` line per finished step.
    """
    from fedsplit.pipeline.report import write_report

    start = time.perf_counter()
    folder = fresh_folder(cfg.out_dir, cfg.name)
    members_dir = folder / "members"
    timings: dict[str, float] = {}
    dirs: dict[str, Path] = {}
    for member in cfg.members:
        t = time.perf_counter()
        extra: dict[str, Any] = {}
        if cfg.pretrain is not None:
            from fedsplit.transfer.pretrain import pretrain

            source = config_from_dict(merge_tree(merge_tree(cfg.base, member.overrides()), cfg.pretrain.set))
            checkpoint = folder / "pretrained" / f"{member.name}.pt"
            checkpoint.parent.mkdir(exist_ok=True)
            result = pretrain(source, checkpoint, epochs=cfg.pretrain.epochs)
            log(f"pretrained={member.name} checkpoint={checkpoint} source_accuracy={result.meta.get('test_accuracy', float('nan')):.4f}")
            extra = {"model": {"pretrained": str(checkpoint)}}
        dirs[member.name] = Path(train(cfg.member_config(member, members_dir, extra)))
        timings[member.name] = time.perf_counter() - t
        log(f"trained={member.name} run_dir={dirs[member.name]} wall_s={timings[member.name]:.1f}")
    teachers: dict[str, Path] = {}
    for spec in cfg.distilled:
        t = time.perf_counter()
        if spec.teacher not in teachers:
            teachers[spec.teacher] = teacher_checkpoint(dirs[spec.teacher], folder / "teachers" / f"{spec.teacher}.pt")
        extra = {"transfer": {"teacher": str(teachers[spec.teacher])}}
        dirs[spec.member] = Path(train(cfg.member_config(spec.student, members_dir, extra)))
        timings[spec.member] = time.perf_counter() - t
        log(f"distilled={spec.member} teacher={spec.teacher} run_dir={dirs[spec.member]} wall_s={timings[spec.member]:.1f}")
    for spec in cfg.pruned:
        t = time.perf_counter()
        dirs[spec.member] = derive_pruned(dirs[spec.parent], members_dir, amount=spec.amount,
                                          finetune_epochs=spec.finetune_epochs, lr=spec.lr, name=spec.member)
        timings[spec.member] = time.perf_counter() - t
        log(f"pruned={spec.member} from={spec.parent} amount={spec.amount:g} wall_s={timings[spec.member]:.1f}")
    for spec in cfg.int8:
        t = time.perf_counter()
        dirs[spec.member] = derive_int8(dirs[spec.parent], members_dir, calibration_samples=spec.calibration_samples,
                                        name=spec.member)
        timings[spec.member] = time.perf_counter() - t
        log(f"int8={spec.member} from={spec.parent} wall_s={timings[spec.member]:.1f}")

    t = time.perf_counter()
    catalog = write_catalog(list(dirs.values()), folder / "catalog.json", cfg.bits_per_value, cfg.latency_repeats)
    timings["catalog"] = time.perf_counter() - t
    log(f"catalog={folder / 'catalog.json'} models={len(catalog['models'])} wall_s={timings['catalog']:.1f}")

    sc = cfg.scenario
    costs = CatalogCosts(sc.local_cycles_per_bit, sc.edge_cycles_per_flop)
    paper = replace(
        PaperScenarioConfig(), bandwidth_hz=sc.bandwidth_hz, edge_cycles_per_s=sc.edge_cycles_per_s,
        deadline_s=sc.deadline_s, energy_budget_j=sc.energy_budget_j,
        accuracy_target=accuracy_target(sc.accuracy_target, catalog),
    )
    profiles = resolve_profiles(cfg.base.get("profiles"))
    problem, devices = device_scenario(sc.devices, profiles, [costs.model_spec(m) for m in catalog["models"]],
                                       seed=sc.seed, config=paper)
    scenario = problem_to_dict(problem)
    for terminal, device in zip(scenario["terminals"], devices):
        terminal["device"] = device
    _write_json(folder / "scenario.json", scenario)

    t = time.perf_counter()
    schedule = solve(problem, cfg.solver, seed=cfg.serve_seed)
    _write_json(folder / "schedule.json", schedule.to_dict(problem))
    log(f"schedule solver={schedule.solver} feasible={str(schedule.feasible).lower()} accuracy_target={problem.accuracy_target:.4f} "
        f"total_latency_s={schedule.total_latency_s:.6g}")
    report = serve(catalog, problem, schedule, costs=costs, devices=devices, requests=cfg.serve_requests, seed=cfg.serve_seed)
    _write_json(folder / "serve.json", report.to_dict())
    timings["schedule_and_serve"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    result = PipelineResult(folder, catalog, problem, devices, schedule, report, dirs, timings, tuple(m.name for m in cfg.members))
    (folder / "pipeline.toml").write_text(tomli_w.dumps(_resolved(cfg)), encoding="utf-8")
    write_report(result)
    log(f"report={folder / 'report.md'} wall_s={timings['total']:.1f}")
    return result


def _resolved(cfg: PipelineConfig) -> dict[str, Any]:
    """The configuration as it ran (TOML-serialisable)."""
    sc = cfg.scenario
    out: dict[str, Any] = {
        "name": cfg.name, "out_dir": cfg.out_dir, "base": cfg.base,
        "family": {
            "architecture": cfg.members[0].architecture,
            "sizes": [[m.resolution, m.width] for m in cfg.members],
            "distilled": [{"size": [d.student.resolution, d.student.width], "teacher": d.teacher, "name": d.member} for d in cfg.distilled],
            "pruned": [{"from": p.parent, "amount": p.amount, "finetune_epochs": p.finetune_epochs, "name": p.member, **({"lr": p.lr} if p.lr else {})} for p in cfg.pruned],
            "int8": [{"from": q.parent, "calibration_samples": q.calibration_samples, "name": q.member} for q in cfg.int8],
        },
        "catalog": {"bits_per_value": cfg.bits_per_value, "latency_repeats": cfg.latency_repeats},
        "scenario": {k: v for k, v in vars(sc).items()},
        "schedule": {"solver": cfg.solver},
        "serve": {"requests": cfg.serve_requests, "seed": cfg.serve_seed},
    }
    if cfg.pretrain is not None:
        out["pretrain"] = {"epochs": cfg.pretrain.epochs, "set": cfg.pretrain.set}
    return out


__all__ = ["PipelineResult", "Trainer", "accuracy_target", "fresh_folder", "run_pipeline"]
