"""The configuration of ``fedsplit pipeline``: a TOML file, validated field by field.

Layout (every table optional except ``family``; ``experiments/configs/pipeline.toml`` is an example)::

    name = "pipeline"            # run folder <out_dir>/<name> (a suffix is added if it exists)
    out_dir = "runs"
    base_config = "digits_fedavg.toml"   # a fedsplit simulate config, beside this file

    [base]                       # simulate keys applied on top of base_config, for every member
    rounds = 15

    [pretrain]                   # optional: pretrain each member centrally, then fine-tune it
    epochs = 3
    set = {data = {classes = "0-4"}}   # the source task (simulate keys over the member's config)

    [family]
    architecture = "cnn"
    sizes = [[5, 0.125], [8, 0.25], [8, 1.0]]       # [input resolution px, width multiplier]
    distilled = [{size = [8, 0.125], teacher = "cnn-8px-w1"}]   # federated, transfer.teacher
    pruned = [{from = "cnn-8px-w1", amount = 0.5, finetune_epochs = 1}]   # lr: default a tenth of train.lr
    int8 = [{from = "cnn-8px-w1"}]

    [catalog]
    bits_per_value = 8
    latency_repeats = 50

    [scenario]                   # terminals by device class (profiles give cpu_hz, kappa, tx_power_w)
    devices = {raspberry-pi-4 = 4, smartphone-mid = 4}
    accuracy_target = "midpoint" # or a number in [0, 1]

    [schedule]
    solver = "auto"

    [serve]
    requests = 0

Errors are :class:`~fedsplit.config.ConfigError` lines ``pipeline: FIELD = VALUE: problem``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedsplit.config import ConfigError, RunConfig, config_from_dict
from fedsplit.models.family import FamilyMember, family, member_name, merge_tree


@dataclass(frozen=True)
class PrunedSpec:
    """A pruned member: ``amount`` of the weights of member ``parent`` removed, then fine-tuned."""

    parent: str
    amount: float
    finetune_epochs: int = 1
    name: str = ""
    lr: float | None = None

    @property
    def member(self) -> str:
        """The member's name (default ``<parent>-pruned<percent>``)."""
        return self.name or f"{self.parent}-pruned{round(self.amount * 100)}"


@dataclass(frozen=True)
class DistilledSpec:
    """A member trained federatedly with a trained member as its teacher (``transfer.teacher``).

    The teacher runs on the student's inputs, so both have the same resolution.
    """

    student: FamilyMember
    teacher: str

    @property
    def member(self) -> str:
        """The member's name (the student's ``name``, default ``<size name>-kd``)."""
        return self.student.name


@dataclass(frozen=True)
class Int8Spec:
    """An int8 member: post-training quantization of member ``parent``."""

    parent: str
    calibration_samples: int = 512
    name: str = ""

    @property
    def member(self) -> str:
        """The member's name (default ``<parent>-int8``)."""
        return self.name or f"{self.parent}-int8"


@dataclass(frozen=True)
class PretrainSpec:
    """Central pretraining of every member on a source task before its federated training.

    ``set`` is a simulate config tree merged over the member's own (e.g. ``data.classes``); the
    member then trains federatedly from the checkpoint (``model.pretrained``), with whatever
    ``transfer.*`` keys ``[base]`` sets.
    """

    epochs: int
    set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScenarioSpec:
    """The scheduling scenario: terminals by device class, in a cell of the paper's geometry.

    Units: ``bandwidth_hz`` [Hz], ``edge_cycles_per_s`` [cycles/s], ``deadline_s`` [s],
    ``energy_budget_j`` [J], ``local_cycles_per_bit`` [cycles/bit], ``edge_cycles_per_flop``
    [cycles/FLOP]; ``accuracy_target`` a number in [0, 1] or ``"midpoint"`` (halfway between the
    least and the most accurate catalog model).
    """

    devices: dict[str, int]
    seed: int = 0
    accuracy_target: float | str = "midpoint"
    bandwidth_hz: float = 20e6
    edge_cycles_per_s: float = 14e9
    deadline_s: float = 0.5
    energy_budget_j: float = 0.05
    local_cycles_per_bit: float = 5.0
    edge_cycles_per_flop: float = 1.0


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline run (see the module docstring)."""

    name: str
    out_dir: str
    base: dict[str, Any]
    members: tuple[FamilyMember, ...]
    pruned: tuple[PrunedSpec, ...]
    int8: tuple[Int8Spec, ...]
    scenario: ScenarioSpec
    distilled: tuple[DistilledSpec, ...] = ()
    pretrain: PretrainSpec | None = None
    bits_per_value: int = 8
    latency_repeats: int = 50
    solver: str = "auto"
    serve_requests: int = 0
    serve_seed: int = 0

    def member_config(self, member: FamilyMember, out_dir: str | Path, extra: dict[str, Any] | None = None) -> RunConfig:
        """The validated simulate configuration that trains ``member`` into ``out_dir/<name>``."""
        tree = merge_tree(merge_tree(self.base, member.overrides()), {"out_dir": str(out_dir), **(extra or {})})
        try:
            return config_from_dict(tree)
        except ConfigError as exc:
            raise ConfigError(f"pipeline: member {member.name}: {exc}") from None


def _fail(key: str, value: Any, problem: str) -> ConfigError:
    return ConfigError(f"pipeline: {key} = {value!r}: {problem}")


def _table(tree: dict[str, Any], key: str, allowed: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    value = tree.get(key, {})
    if not isinstance(value, dict):
        raise _fail(prefix + key, value, "expected a table")
    for k in value:
        if k not in allowed:
            raise ConfigError(f"pipeline: unknown key '{prefix}{key}.{k}' (allowed: {', '.join(allowed)})")
    return value


def _number(value: Any, key: str, *, integer: bool = False, low: float | None = None, low_open: bool = False,
            high: float | None = None, high_open: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise _fail(key, value, "expected an integer" if integer else "expected a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise _fail(key, value, f"must be {'>' if low_open else '>='} {low:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise _fail(key, value, f"must be {'<' if high_open else '<='} {high:g}")
    return value if integer else float(value)


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, value, "expected a non-empty string")
    return value


def _records(value: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _fail(key, value, "expected a list of tables")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _fail(f"{key}[{i}]", item, "expected a table")
        for k in item:
            if k not in allowed:
                raise ConfigError(f"pipeline: unknown key '{key}[{i}].{k}' (allowed: {', '.join(allowed)})")
        for k in required:
            if k not in item:
                raise ConfigError(f"pipeline: {key}[{i}].{k}: missing")
    return value


def _members(fam: dict[str, Any]) -> list[FamilyMember]:
    architecture = _string(fam.get("architecture", "cnn"), "family.architecture")
    sizes = fam.get("sizes")
    if not isinstance(sizes, list) or not sizes:
        raise _fail("family.sizes", sizes, "expected a non-empty list of [resolution, width] pairs")
    pairs = []
    for i, pair in enumerate(sizes):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise _fail(f"family.sizes[{i}]", pair, "expected [resolution in pixels (0 = native), width multiplier]")
        resolution = _number(pair[0], f"family.sizes[{i}][0]", integer=True, low=0)
        width = _number(pair[1], f"family.sizes[{i}][1]", low=0, low_open=True)
        pairs.append((resolution, width))
    try:
        return family(architecture, pairs)
    except ValueError as exc:
        raise ConfigError(f"pipeline: family: {exc}") from None


def _distilled(fam: dict[str, Any], members: list[FamilyMember], architecture: str) -> list[DistilledSpec]:
    out = []
    by_name = {m.name: m for m in members}
    for i, item in enumerate(_records(fam.get("distilled", []), "family.distilled", ("size", "teacher", "name"), ("size", "teacher"))):
        key = f"family.distilled[{i}]"
        size = item["size"]
        if not (isinstance(size, list) and len(size) == 2):
            raise _fail(f"{key}.size", size, "expected [resolution in pixels (0 = native), width multiplier]")
        resolution = _number(size[0], f"{key}.size[0]", integer=True, low=0)
        width = _number(size[1], f"{key}.size[1]", low=0, low_open=True)
        teacher = by_name.get(_string(item["teacher"], f"{key}.teacher"))
        if teacher is None:
            raise _fail(f"{key}.teacher", item["teacher"], f"not a member of family.sizes (known: {', '.join(by_name)})")
        if teacher.resolution != resolution:
            raise _fail(f"{key}.size[0]", resolution, f"must be the teacher's resolution ({teacher.resolution}): the teacher sees the student's inputs")
        name = _string(item["name"], f"{key}.name") if "name" in item else f"{member_name(architecture, resolution, width)}-kd"
        try:
            student = FamilyMember(name, architecture, resolution, width)
        except ValueError as exc:
            raise ConfigError(f"pipeline: {key}: {exc}") from None
        out.append(DistilledSpec(student, teacher.name))
    return out


def _derived(fam: dict[str, Any], names: list[str]) -> tuple[list[PrunedSpec], list[Int8Spec]]:
    pruned, int8 = [], []
    for i, item in enumerate(_records(fam.get("pruned", []), "family.pruned", ("from", "amount", "finetune_epochs", "lr", "name"), ("from", "amount"))):
        key = f"family.pruned[{i}]"
        spec = PrunedSpec(
            parent=_string(item["from"], f"{key}.from"),
            amount=_number(item["amount"], f"{key}.amount", low=0, high=1, high_open=True),
            finetune_epochs=_number(item.get("finetune_epochs", 1), f"{key}.finetune_epochs", integer=True, low=0),
            name=_string(item["name"], f"{key}.name") if "name" in item else "",
            lr=_number(item["lr"], f"{key}.lr", low=0, low_open=True) if "lr" in item else None,
        )
        if spec.parent not in names:
            raise _fail(f"{key}.from", spec.parent, f"not a member defined before it (known: {', '.join(names)})")
        names.append(spec.member)
        pruned.append(spec)
    for i, item in enumerate(_records(fam.get("int8", []), "family.int8", ("from", "calibration_samples", "name"), ("from",))):
        key = f"family.int8[{i}]"
        spec = Int8Spec(
            parent=_string(item["from"], f"{key}.from"),
            calibration_samples=_number(item.get("calibration_samples", 512), f"{key}.calibration_samples", integer=True, low=1),
            name=_string(item["name"], f"{key}.name") if "name" in item else "",
        )
        if spec.parent not in names:
            raise _fail(f"{key}.from", spec.parent, f"not a member defined before it (known: {', '.join(names)})")
        names.append(spec.member)
        int8.append(spec)
    for name in names:
        if names.count(name) > 1:
            raise _fail("family", name, "two members have this name")
    return pruned, int8


def _scenario(tree: dict[str, Any]) -> ScenarioSpec:
    allowed = tuple(f.name for f in fields(ScenarioSpec))
    s = _table(tree, "scenario", allowed)
    devices = s.get("devices", {"raspberry-pi-4": 4, "smartphone-mid": 3, "jetson-nano": 2, "laptop": 1})
    if not isinstance(devices, dict) or not devices:
        raise _fail("scenario.devices", devices, "expected a table: device profile -> number of terminals")
    for name, count in devices.items():
        _number(count, f"scenario.devices.{name}", integer=True, low=1)
    target = s.get("accuracy_target", "midpoint")
    if target != "midpoint":
        target = _number(target, "scenario.accuracy_target", low=0, high=1) if not isinstance(target, str) else None
        if target is None:
            raise _fail("scenario.accuracy_target", s["accuracy_target"], "expected a number in [0, 1] or 'midpoint'")
    values: dict[str, Any] = {"devices": dict(devices), "accuracy_target": target}
    if "seed" in s:
        values["seed"] = _number(s["seed"], "scenario.seed", integer=True)
    for key in ("bandwidth_hz", "edge_cycles_per_s", "deadline_s", "energy_budget_j", "edge_cycles_per_flop"):
        if key in s:
            values[key] = _number(s[key], f"scenario.{key}", low=0, low_open=True)
    if "local_cycles_per_bit" in s:
        values["local_cycles_per_bit"] = _number(s["local_cycles_per_bit"], "scenario.local_cycles_per_bit", low=0)
    return ScenarioSpec(**values)


def pipeline_from_dict(tree: dict[str, Any]) -> PipelineConfig:
    """Validate a pipeline configuration tree (a parsed TOML file)."""
    from fedsplit.devices import resolve_profiles
    from fedsplit.inference.solve import SOLVERS

    top = ("name", "out_dir", "base_config", "base", "pretrain", "family", "catalog", "scenario", "schedule", "serve")
    for key in tree:
        if key not in top:
            raise ConfigError(f"pipeline: unknown key '{key}' (allowed: {', '.join(top)})")
    base: dict[str, Any] = {}
    if "base_config" in tree:
        path = Path(_string(tree["base_config"], "base_config"))
        if not path.is_file():
            raise _fail("base_config", str(path), "no such file")
        try:
            base = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise _fail("base_config", str(path), f"not valid TOML ({exc})") from None
    overrides = tree.get("base", {})
    if not isinstance(overrides, dict):
        raise _fail("base", overrides, "expected a table of fedsplit simulate keys")
    base = merge_tree(base, overrides)
    try:
        run = config_from_dict(base)
    except ConfigError as exc:
        raise ConfigError(f"pipeline: base: {exc}") from None
    fam = _table(tree, "family", ("architecture", "sizes", "distilled", "pruned", "int8"))
    members = _members(fam)
    distilled = _distilled(fam, members, members[0].architecture)
    pruned, int8 = _derived(fam, [m.name for m in members] + [d.member for d in distilled])
    pretrain = None
    if "pretrain" in tree:
        p = _table(tree, "pretrain", ("epochs", "set"))
        source = p.get("set", {})
        if not isinstance(source, dict):
            raise _fail("pretrain.set", source, "expected a table of fedsplit simulate keys (the source task)")
        pretrain = PretrainSpec(epochs=_number(p.get("epochs"), "pretrain.epochs", integer=True, low=1), set=source)
    catalog = _table(tree, "catalog", ("bits_per_value", "latency_repeats"))
    schedule = _table(tree, "schedule", ("solver",))
    serve = _table(tree, "serve", ("requests", "seed"))
    scenario = _scenario(tree)
    profiles = resolve_profiles(run.profiles)
    for name in scenario.devices:
        if name not in profiles:
            raise _fail(f"scenario.devices.{name}", scenario.devices[name], f"unknown device profile (known: {', '.join(sorted(profiles))})")
    solver = schedule.get("solver", "auto")
    if solver not in SOLVERS:
        raise _fail("schedule.solver", solver, f"unknown (allowed: {', '.join(SOLVERS)})")
    return PipelineConfig(
        name=_string(tree.get("name", "pipeline"), "name"),
        out_dir=_string(tree.get("out_dir", "runs"), "out_dir"),
        base=base,
        members=tuple(members),
        pruned=tuple(pruned),
        int8=tuple(int8),
        distilled=tuple(distilled),
        scenario=scenario,
        pretrain=pretrain,
        bits_per_value=_number(catalog.get("bits_per_value", 8), "catalog.bits_per_value", integer=True, low=1),
        latency_repeats=_number(catalog.get("latency_repeats", 50), "catalog.latency_repeats", integer=True, low=1),
        solver=solver,
        serve_requests=_number(serve.get("requests", 0), "serve.requests", integer=True, low=0),
        serve_seed=_number(serve.get("seed", 0), "serve.seed", integer=True),
    )


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read and validate a pipeline TOML file (``overrides``: a tree merged over it).

    A relative ``base_config`` in the file is found beside the file (else in the working
    directory, where earlier examples put it); one given in ``overrides`` (``--set``) is relative
    to the working directory. ``out_dir`` is always relative to the working directory.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline: file {str(path)!r} not found")
    try:
        tree = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"pipeline: {path}: not valid TOML ({exc})") from None
    base_config = tree.get("base_config")
    if isinstance(base_config, str) and not Path(base_config).is_absolute():
        beside = path.parent / base_config  # the file's own folder first, then the working directory
        if beside.is_file() or not Path(base_config).is_file():
            tree["base_config"] = str(beside)
    return pipeline_from_dict(merge_tree(tree, overrides or {}))


__all__ = ["DistilledSpec", "Int8Spec", "PipelineConfig", "PretrainSpec", "PrunedSpec", "ScenarioSpec", "load_pipeline", "pipeline_from_dict"]
