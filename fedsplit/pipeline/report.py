"""The pipeline's report: ``report.md``, ``family.csv``, ``terminals.csv`` and two plots.

* ``plots/family_accuracy_flops.png``: accuracy against FLOPs per inference (log scale) of every
  catalog model, trained members joined by a line, derived ones marked by kind;
* ``plots/schedule_by_device.png``: how many terminals of each device class the schedule gave each
  model (stacked bars).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsplit.report.catalog import catalog_rows

if TYPE_CHECKING:
    from fedsplit.pipeline.result import PipelineResult


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def terminal_rows(result: PipelineResult) -> list[dict[str, Any]]:
    """One row per terminal: device class, chosen model, allocation, promised/modelled latency, accuracy."""
    schedule, served = result.schedule, result.serve.terminals
    return [
        {
            "terminal": t.terminal, "device": t.device, "model": t.model,
            "bandwidth_hz": float(schedule.bandwidth_hz[t.terminal]),
            "edge_cycles_per_s": float(schedule.edge_cycles_per_s[t.terminal]),
            "energy_j": float(schedule.energy_j[t.terminal]),
            "promised_latency_s": t.promised_latency_s, "modelled_latency_s": t.modelled_latency_s,
            "catalog_accuracy": t.catalog_accuracy, "realised_accuracy": t.realised_accuracy, "requests": t.requests,
        }
        for t in served
    ]


def choices_by_device(result: PipelineResult) -> dict[str, Counter]:
    """Device class -> Counter of the models the schedule chose for its terminals (scenario order)."""
    out: dict[str, Counter] = {}
    for t in result.serve.terminals:
        out.setdefault(t.device, Counter())[t.model] += 1
    return out


def plot_family(result: PipelineResult, path: Path) -> None:
    """Accuracy vs FLOPs per inference of the catalog's models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result.catalog["models"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    trained = [m for m in models if m["name"] in result.family]
    ax.plot([m["flops"] for m in trained], [m["accuracy"] for m in trained], "o-", label="family (federated)")
    for kind, marker in (("distilled", "D"), ("finetuned", "v"), ("pruned", "s"), ("int8", "^")):
        sub = [m for m in models if m["kind"] == kind]
        if sub:
            ax.plot([m["flops"] for m in sub], [m["accuracy"] for m in sub], marker, linestyle="none", label=kind)
    stacked: Counter = Counter()  # labels of models with equal FLOPs go one under the other
    for m in sorted(models, key=lambda m: -m["accuracy"]):
        ax.annotate(m["name"], (m["flops"], m["accuracy"]), textcoords="offset points",
                    xytext=(6, 2 - 9 * stacked[m["flops"]]), fontsize=7)
        stacked[m["flops"]] += 1
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per inference (batch of one)")
    ax.set_ylabel("held-out accuracy at the model's resolution")
    ax.set_title("model family: accuracy vs FLOPs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_choices(result: PipelineResult, path: Path) -> None:
    """Stacked bars: terminals per model, per device class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    choices = choices_by_device(result)
    devices = list(choices)
    order = [m["name"] for m in result.catalog["models"]]
    used = [name for name in order if any(name in c for c in choices.values())]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    bottom = [0] * len(devices)
    for name in used:
        counts = [choices[d].get(name, 0) for d in devices]
        ax.bar(devices, counts, bottom=bottom, label=name)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_ylabel("terminals")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"schedule ({result.schedule.solver}): model per device class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def family_markdown(catalog: dict[str, Any], devices: list[str]) -> list[str]:
    """The catalog as a markdown table (modelled latency on the scenario's device classes)."""
    header = ["model", "kind", "input", "params", "nonzero", "FLOPs", "accuracy", "CPU ms"]
    header += [f"{d} ms" for d in devices]
    rows = []
    for m in catalog["models"]:
        c, h, w = m["input_shape"]
        row = [m["name"], m["kind"], f"{c}x{h}x{w}", f"{m['params']:,}", f"{m['nonzero_params']:,}",
               f"{m['flops']:,.0f}", f"{m['accuracy']:.4f}", f"{1e3 * m['cpu_latency_s']:.3f}"]
        row += [f"{1e3 * m['devices'][d]['latency_s']:.3g}" if d in m["devices"] else "-" for d in devices]
        rows.append(row)
    return _markdown_table(header, rows)


def write_report(result: PipelineResult) -> Path:
    """Write ``report.md``, the CSVs and the plots into the pipeline's folder; return ``report.md``."""
    folder = result.folder
    (folder / "plots").mkdir(exist_ok=True)
    _write_csv(folder / "family.csv", catalog_rows(result.catalog))
    _write_csv(folder / "terminals.csv", terminal_rows(result))
    plot_family(result, folder / "plots" / "family_accuracy_flops.png")
    plot_choices(result, folder / "plots" / "schedule_by_device.png")
    classes = list(dict.fromkeys(result.devices))
    s, sv = result.schedule, result.serve
    lines = [f"# Pipeline report: {folder.name}", "",
             (f"Wall time {result.timings_s.get('total', float('nan')):.1f} s. "
              f"Dataset: {result.catalog.get('dataset')}; CPU latencies measured on {result.catalog.get('host')}."), "",
             "## Model family (catalog.json)", ""]
    lines += family_markdown(result.catalog, classes)
    problems = result.separation
    lines += ["", ("The family's members separate (accuracy and FLOPs both increase with size)." if not problems else
                   "The family's members do NOT separate: " + "; ".join(problems)), "",
              "![accuracy vs FLOPs](plots/family_accuracy_flops.png)", "",
              "## Schedule (schedule.json)", "",
              (f"Solver {s.solver}, feasible: {str(s.feasible).lower()}, {len(result.devices)} terminals, "
               f"accuracy target {result.problem.accuracy_target:.4f}, mean accuracy {s.accuracy:.4f}, "
               f"total latency {s.total_latency_s:.6g} s, total energy {s.total_energy_j:.6g} J."), ""]
    lines += [f"- reason: {r}" for r in s.reasons]
    choices = choices_by_device(result)
    used = [m["name"] for m in result.catalog["models"] if any(m["name"] in c for c in choices.values())]
    lines += _markdown_table(["device class", "terminals", *used],
                             [[d, str(sum(c.values())), *[str(c.get(n, 0)) for n in used]] for d, c in choices.items()])
    lines += ["", "![model per device class](plots/schedule_by_device.png)", "",
              "## Serving (serve.json)", "",
              (f"Each terminal ran its model on {sv.terminals[0].requests} held-out images (of {sv.test_samples}) "
               "resized to the model's resolution."), ""]
    lines += _markdown_table(
        ["catalog mean accuracy", "realised mean accuracy", "gap (pp)", "promised total latency (s)",
         "modelled total latency (s)", "max relative latency difference"],
        [[f"{sv.catalog_mean_accuracy:.4f}", f"{sv.realised_mean_accuracy:.4f}", f"{sv.accuracy_gap_pp:.3f}",
          f"{sv.promised_total_latency_s:.6g}", f"{sv.modelled_total_latency_s:.6g}", f"{sv.max_latency_rel_diff:.3g}"]],
    )
    lines += [f"- note: {n}" for n in sv.notes]
    lines += ["", "Per terminal: terminals.csv; per model: family.csv.", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


__all__ = ["choices_by_device", "family_markdown", "plot_choices", "plot_family", "terminal_rows", "write_report"]
