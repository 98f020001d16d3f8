"""Models from a training run's ``catalog.json``: measured accuracy and FLOPs to scheduler costs.

A catalog lists ``{"name", "accuracy", "flops", "input_shape": [C, H, W], "input_bits"}`` per model.
The scheduler needs, per model, the uploaded bits ``D``, the terminal's preprocessing cycles and the
edge server's inference cycles. The mapping, with explicit and configurable constants:

* ``D = input_bits`` (what the terminal sends);
* ``local_cycles = local_cycles_per_bit * input_bits`` — preprocessing (resize, normalise, encode)
  touches each input bit a few times; default 5 cycles/bit;
* ``edge_cycles = edge_cycles_per_flop * flops`` — the edge server's "cycles" are the unit in which
  its capacity ``F`` [cycles/s] is quoted; default 1 cycle per FLOP (one fused multiply-add lane per
  cycle). Use e.g. ``0.01`` for an accelerator quoted in CPU-equivalent GHz that does 100 FLOPs/cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedsplit.inference.errors import ScenarioError
from fedsplit.inference.scenario import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, number_field, read_json_file
from fedsplit.inference.system_model import ModelSpec


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


def models_from_catalog(data: object, costs: CatalogCosts | None = None) -> list[ModelSpec]:
    """Validate a catalog's JSON value and map its models to :class:`ModelSpec` records."""
    costs = costs or CatalogCosts()
    number_field({"v": costs.local_cycles_per_bit}, "v", "--local-cycles-per-bit", NON_NEGATIVE)
    number_field({"v": costs.edge_cycles_per_flop}, "v", "--edge-cycles-per-flop", POSITIVE)
    if not isinstance(data, dict):
        raise ScenarioError("catalog", type(data).__name__, 'a JSON object with a "models" list')
    entries = data.get("models")
    if "models" not in data:
        raise ScenarioError("catalog.models", None, "a non-empty list of models", missing=True)
    if not isinstance(entries, list) or not entries:
        raise ScenarioError("catalog.models", entries, "a non-empty list of models")
    out = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"catalog.models[{i}]"
        if not isinstance(entry, dict):
            raise ScenarioError(where, entry, "an object describing a model")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip() or name in names:
            raise ScenarioError(f"{where}.name", name, "a non-empty string not used by another model",
                                missing="name" not in entry)
        names.add(name)
        accuracy = number_field(entry, "accuracy", f"{where}.accuracy", UNIT_INTERVAL)
        flops = number_field(entry, "flops", f"{where}.flops", POSITIVE)
        bits = number_field(entry, "input_bits", f"{where}.input_bits", POSITIVE)
        shape = entry.get("input_shape")
        if not (
            isinstance(shape, list) and len(shape) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape)
        ):
            raise ScenarioError(f"{where}.input_shape", shape, "a list [C, H, W] of three positive integers",
                                missing="input_shape" not in entry)
        out.append(
            ModelSpec(
                name=name,
                input_bits=bits,
                local_cycles=costs.local_cycles_per_bit * bits,
                edge_cycles=costs.edge_cycles_per_flop * flops,
                accuracy=accuracy,
            )
        )
    return out


def load_catalog(path: str | Path, costs: CatalogCosts | None = None) -> list[ModelSpec]:
    """Read a ``catalog.json`` and map it (see the module docstring)."""
    return models_from_catalog(read_json_file(path, "--catalog"), costs)
