"""Scenario files: explicit terminals and models as JSON, validated field by field.

Format::

    {"bandwidth_hz": 2e7, "edge_cycles_per_s": 1.4e10, "noise_w_per_hz": 3.98e-21,
     "accuracy_target": 0.67,
     "terminals": [{"gain": 1e-12, "cpu_hz": 1.5e9, "tx_power_w": 0.3,
                    "energy_budget_j": 0.05, "deadline_s": 0.5, "kappa": 1e-28}, ...],
     "models": [{"name": "small", "input_bits": 240000, "local_cycles": 1.2e6,
                 "edge_cycles": 2.4e7, "accuracy": 0.6}, ...]}

``gain`` is the linear channel power gain (path loss times fading). Every bad field raises
:class:`.errors.ScenarioError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from fedsplit.inference.errors import ScenarioError
from fedsplit.inference.system_model import ModelSpec, Problem, TerminalSpec

Check = tuple[Callable[[float], bool], str]
POSITIVE: Check = (lambda v: v > 0, "a finite number > 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, "a finite number >= 0")
UNIT_INTERVAL: Check = (lambda v: 0 <= v <= 1, "a number in [0, 1]")

SYSTEM_FIELDS: dict[str, Check] = {
    "bandwidth_hz": POSITIVE,
    "edge_cycles_per_s": POSITIVE,
    "noise_w_per_hz": POSITIVE,
    "accuracy_target": UNIT_INTERVAL,
}
TERMINAL_FIELDS: dict[str, Check] = {
    "gain": POSITIVE,
    "cpu_hz": POSITIVE,
    "tx_power_w": POSITIVE,
    "energy_budget_j": POSITIVE,
    "deadline_s": POSITIVE,
    "kappa": NON_NEGATIVE,
}
MODEL_FIELDS: dict[str, Check] = {
    "input_bits": POSITIVE,
    "local_cycles": NON_NEGATIVE,
    "edge_cycles": POSITIVE,
    "accuracy": UNIT_INTERVAL,
}


def number_field(record: dict, key: str, path: str, check: Check) -> float:
    """Read ``record[key]`` as a finite number meeting ``check`` (raises :class:`ScenarioError`)."""
    test, allowed = check
    if key not in record:
        raise ScenarioError(path, None, allowed, missing=True)
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(path, value, allowed)
    if not math.isfinite(float(value)) or not test(float(value)):
        raise ScenarioError(path, value, allowed)
    return float(value)


def _record_list(data: dict, key: str, what: str) -> list:
    allowed = f"a non-empty list of {what}"
    if key not in data:
        raise ScenarioError(key, None, allowed, missing=True)
    value = data[key]
    if not isinstance(value, list) or not value:
        raise ScenarioError(key, value, allowed)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ScenarioError(f"{key}[{i}]", item, f"an object with fields of a {what[:-1]}")
    return value


def problem_from_dict(data: object) -> Problem:
    """Validate a scenario's JSON value and build the :class:`Problem`."""
    if not isinstance(data, dict):
        raise ScenarioError("scenario", type(data).__name__, "a JSON object")
    system = {key: number_field(data, key, key, check) for key, check in SYSTEM_FIELDS.items()}
    terminals = []
    for i, item in enumerate(_record_list(data, "terminals", "terminals")):
        values = {k: number_field(item, k, f"terminals[{i}].{k}", c) for k, c in TERMINAL_FIELDS.items()}
        terminals.append(TerminalSpec(**values))
    models = []
    names: set[str] = set()
    for i, item in enumerate(_record_list(data, "models", "models")):
        name = item.get("name")
        if "name" not in item:
            raise ScenarioError(f"models[{i}].name", None, "a non-empty string", missing=True)
        if not isinstance(name, str) or not name.strip():
            raise ScenarioError(f"models[{i}].name", name, "a non-empty string")
        if name in names:
            raise ScenarioError(f"models[{i}].name", name, "a name not used by another model")
        names.add(name)
        values = {k: number_field(item, k, f"models[{i}].{k}", c) for k, c in MODEL_FIELDS.items()}
        models.append(ModelSpec(name=name, **values))
    return Problem.from_specs(**system, terminals=terminals, models=models)


def problem_to_dict(problem: Problem) -> dict:
    """The scenario JSON value of a problem (inverse of :func:`problem_from_dict`)."""
    return {
        "bandwidth_hz": problem.bandwidth_hz,
        "edge_cycles_per_s": problem.edge_cycles_per_s,
        "noise_w_per_hz": problem.noise_w_per_hz,
        "accuracy_target": problem.accuracy_target,
        "terminals": [
            {key: getattr(problem.terminal(i), key) for key in TERMINAL_FIELDS}
            for i in range(problem.n_terminals)
        ],
        "models": [
            {"name": problem.model_names[m], **{key: getattr(problem.model(m), key) for key in MODEL_FIELDS}}
            for m in range(problem.n_models)
        ],
    }


def read_json_file(path: str | Path, option: str) -> object:
    """Parse a JSON file; unreadable or malformed files raise :class:`ScenarioError` on ``option``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(option, str(path), f"a readable file ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(
            option, str(path), f"valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc


def load_scenario(path: str | Path) -> Problem:
    """Read and validate a scenario file."""
    return problem_from_dict(read_json_file(path, "--scenario"))
