"""Models from a training run's ``catalog.json``: measured accuracy and FLOPs to scheduler costs.

A catalog is read only through the JSON schema shipped next to this module
(``catalog.schema.json``, :func:`catalog_schema`): :func:`validate_catalog` checks a catalog
against it with :mod:`jsonschema` and refuses the first bad entry, naming the entry (index and
model name), the field, the value and what is allowed. A missing field, a negative cost, an
accuracy outside ``[0, 1]`` or an unknown field is a schema error; duplicate names (which JSON
Schema cannot express) are checked after it.

The scheduler needs, per model, the uploaded bits ``D``, the terminal's preprocessing cycles and
the edge server's inference cycles. The mapping, with explicit and configurable constants:

* ``D = input_bits`` (what the terminal sends);
* ``local_cycles = local_cycles_per_bit * input_bits`` — preprocessing (resize, normalise, encode)
  touches each input bit a few times; default 5 cycles/bit;
* ``edge_cycles = edge_cycles_per_flop * flops`` — the edge server's "cycles" are the unit in which
  its capacity ``F`` [cycles/s] is quoted; default 1 cycle per FLOP (one fused multiply-add lane per
  cycle). Use e.g. ``0.01`` for an accelerator quoted in CPU-equivalent GHz that does 100 FLOPs/cycle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from fedsplit.inference.errors import ScenarioError
from fedsplit.inference.scenario import (
    NON_NEGATIVE,
    POSITIVE,
    number_field,
    read_json_file,
)
from fedsplit.inference.system_model import ModelSpec

#: The ``schema`` value of catalogs this module reads and :mod:`fedsplit.report.catalog` writes.
CATALOG_FORMAT = "fedsplit-catalog/1"
SCHEMA_FILE = "catalog.schema.json"


@dataclass(frozen=True)
class CatalogCosts:
    """Constants turning catalog entries into scheduler costs.

    Parameters
    ----------
    local_cycles_per_bit : float
        Terminal CPU cycles of preprocessing per input bit [cycles/bit].
    edge_cycles_per_flop : float
        Edge-server cycles per FLOP of inference [cycles/FLOP].
    """

    local_cycles_per_bit: float = 5.0
    edge_cycles_per_flop: float = 1.0

    def model_spec(self, entry: dict[str, Any]) -> ModelSpec:
        """The scheduler's view of one (validated) catalog entry."""
        bits = float(entry["input_bits"])
        return ModelSpec(
            name=entry["name"],
            input_bits=bits,
            local_cycles=self.local_cycles_per_bit * bits,
            edge_cycles=self.edge_cycles_per_flop * float(entry["flops"]),
            accuracy=float(entry["accuracy"]),
        )


@lru_cache(maxsize=1)
def catalog_schema() -> dict[str, Any]:
    """The shipped JSON schema of a catalog (``fedsplit/inference/catalog.schema.json``)."""
    text = resources.files("fedsplit.inference").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return {**catalog_schema()["$defs"][ref.split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _allowed(schema: dict[str, Any]) -> str:
    """What a (sub)schema allows, in words."""
    schema = _resolve(schema)
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind in ("number", "integer"):
        noun = "an integer" if kind == "integer" else "a number"
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None and hi is not None:
            return f"{noun} in [{lo:g}, {hi:g}]"
        if "exclusiveMinimum" in schema:
            return f"{noun} > {schema['exclusiveMinimum']:g}"
        if lo is not None:
            return f"{noun} >= {lo:g}"
        return noun
    if kind == "string":
        return "a non-empty string" if schema.get("minLength") else "a string"
    if kind == "array":
        items = _allowed(schema.get("items", {}))
        n = schema.get("minItems")
        if n is not None and n == schema.get("maxItems"):
            return f"a list of {n} items, each {items}"
        return f"a non-empty list, each {items}" if n else f"a list, each {items}"
    if kind == "object":
        required = schema.get("required")
        return f"an object with {', '.join(required)}" if required else "an object"
    return schema.get("description", "a valid value")


def _where(data: Any, path: list[Any]) -> str:
    """``catalog.models[2].accuracy (model 'cnn-8px-w1')`` for a schema path."""
    text = "catalog"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    if len(path) >= 2 and path[0] == "models" and isinstance(path[1], int):
        entries = data.get("models") if isinstance(data, dict) else None
        entry = entries[path[1]] if isinstance(entries, list) and path[1] < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name.strip():
            text += f" (model {name!r})"
    return text


def _order(error: Any) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path)


def validate_catalog(data: object) -> dict[str, Any]:
    """Check a catalog's JSON value against the shipped schema; return it unchanged.

    Raises
    ------
    ScenarioError
        For the first bad entry (in catalog order): its field path with index and model name, the
        value (``None`` when missing) and what the schema allows; or for a name used twice.
    """
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(catalog_schema())
    errors = sorted(validator.iter_errors(data), key=_order)
    if errors:
        error = errors[0]
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = next(p for p in error.validator_value if p not in error.instance)
            prop = error.schema.get("properties", {}).get(missing, {})
            raise ScenarioError(_where(data, path + [missing]), None, _allowed(prop), missing=True)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            extra = next((k for k in error.instance if k not in known), None)
            if extra is not None and known:
                raise ScenarioError(_where(data, path + [extra]), error.instance[extra],
                                    f"no such field (known: {', '.join(known)})")
        raise ScenarioError(_where(data, path), error.instance, _allowed(error.schema))
    assert isinstance(data, dict)  # the schema's top-level type
    first: dict[str, int] = {}
    for i, entry in enumerate(data["models"]):
        name = entry["name"]
        if name in first:
            raise ScenarioError(_where(data, ["models", i, "name"]), name,
                                f"a name not used by catalog.models[{first[name]}]")
        first[name] = i
    return data


def read_catalog(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``catalog.json`` (:class:`ScenarioError` on ``--catalog`` or a field).

    Each model's ``run_dir`` is returned as a path this process can open: a relative one is
    relative to the catalog file's folder (how ``fedsplit catalog build`` writes it, so a catalog
    moved together with its runs still finds them, whatever the working directory). A catalog
    written before that held paths relative to the folder it was built in: when the path does not
    exist beside the catalog but does from the working directory, that one is taken.
    """
    catalog = validate_catalog(read_json_file(path, "--catalog"))
    base = Path(path).parent
    for entry in catalog["models"]:
        run_dir = Path(entry["run_dir"])
        beside = run_dir if run_dir.is_absolute() else base / run_dir
        entry["run_dir"] = str(run_dir if not beside.exists() and run_dir.exists() else beside)
    return catalog


def models_from_catalog(data: object, costs: CatalogCosts | None = None) -> list[ModelSpec]:
    """Validate a catalog's JSON value and map its models to :class:`ModelSpec` records."""
    costs = costs or CatalogCosts()
    number_field({"v": costs.local_cycles_per_bit}, "v", "--local-cycles-per-bit", NON_NEGATIVE)
    number_field({"v": costs.edge_cycles_per_flop}, "v", "--edge-cycles-per-flop", POSITIVE)
    return [costs.model_spec(entry) for entry in validate_catalog(data)["models"]]


def load_catalog(path: str | Path, costs: CatalogCosts | None = None) -> list[ModelSpec]:
    """Read a ``catalog.json`` and map it (see the module docstring)."""
    return models_from_catalog(read_json_file(path, "--catalog"), costs)
