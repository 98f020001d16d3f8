"""Clean edges: configuration errors before anything starts, and a core whose imports run one way.

* ``fedsplit simulate`` with a bad name exits 2 with one line, before any engine (Ray) starts.
* The core (the ``fedsplit/`` folder) has no import cycles, between its subpackages or between
  modules, counting imports inside functions and under ``TYPE_CHECKING``; it imports neither
  Flower nor Ray; the Flower glue (``strategies/``, ``clients/``) shares its record helpers
  through the core (:mod:`fedsplit.records`) rather than through each other.
* Lists written once: strategy names, dataset names, partitioners.
"""

from __future__ import annotations

import ast
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsplit.config import ConfigError, load_config
from tests.conftest import REPO, fedsplit_cmd, fresh_interpreter_json

CORE = REPO / "fedsplit"
#: Packages of the ``fedsplit`` namespace that live in their own top-level folders (Flower glue).
GLUE = {"strategies": REPO / "strategies", "clients": REPO / "clients", "simulation": REPO / "simulation"}


# --------------------------------------------------------------------------- configuration errors


def test_unknown_model_exits_2_with_one_line_before_ray_starts(tmp_path: Path) -> None:
    start = time.perf_counter()
    proc = subprocess.run(
        fedsplit_cmd("simulate", "--set", "model.name=nope", "--set", f"out_dir={tmp_path}"),
        capture_output=True, text=True, timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("fedsplit simulate: error: config: model.name = 'nope': unknown model (known: ")
    for name in ("mlp", "fedavg-cnn", "cnn", "mobilenet", "tv:<name>"):
        assert name in lines[0]
    assert not any(tmp_path.iterdir())  # no run folder
    # ~3.5 s on an idle 2-core machine (importing torch); the bound leaves room for a busy one.
    # The exact check that no engine started is the next test's.
    assert elapsed < 60, f"took {elapsed:.1f} s: something started before the config was checked"


def test_config_error_path_never_initialises_ray(tmp_path: Path) -> None:
    """Run the same command in-process (in a child) and ask Ray afterwards whether it was started."""
    probe = (
        "import json, sys\n"
        "from fedsplit.cli import main\n"
        f"rc = main(['simulate', '--set', 'model.name=nope', '--set', 'out_dir={tmp_path}'])\n"
        "ray = sys.modules.get('ray')\n"
        "print(json.dumps({'rc': rc, 'ray_started': bool(ray and ray.is_initialized())}))\n"
    )
    assert fresh_interpreter_json(probe, timeout_s=120) == {"rc": 2, "ray_started": False}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.name=nope", "config: model.name = 'nope': unknown model (known: mlp, "),
        ("model.name=tv:resnet19", "config: model.name = 'tv:resnet19': torchvision has no model 'resnet19' "),
        ("data.partitioner=random", "config: data.partitioner = 'random': unknown (allowed: iid, dirichlet"),
        ("data.samples_per_client=20", "config: data.samples_per_client = 20: per-client generation is for data.name = 'synthetic' only"),
        ("data.partitioner=shards data.shards_per_client=11", "config: data.shards_per_client = 11: must be <= 10"),
        ("strategy.name=pkg:", "config: strategy.name = 'pkg:': not a package.module:Class path (allowed: fedavg"),
    ],
)
def test_names_are_checked_against_the_rooms_that_own_them(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, override.split())
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.name=tv:resnet18"],
        ["strategy.name=FedAvgM"],
        ["strategy.name=my_pkg.strategies:Outer.Inner"],  # checked by form: importing is the server's job
        ["data.name=synthetic", "data.samples_per_client=20", "data.partitioner=shards", "data.shards_per_client=10"],
    ],
)
def test_good_names_pass(overrides: list[str]) -> None:
    load_config(None, overrides)


def test_each_list_of_names_is_written_once() -> None:
    from fedsplit.config.schema import STRATEGY_NAMES, DataConfig
    from fedsplit.data import DATASETS, PARTITIONERS
    from fedsplit.strategies import BUILTIN_STRATEGIES

    assert tuple(BUILTIN_STRATEGIES) == STRATEGY_NAMES
    assert all(cls.__name__.lower() == name for name, cls in BUILTIN_STRATEGIES.items())
    metadata = {f: DataConfig.__dataclass_fields__[f].metadata for f in ("name", "partitioner")}
    assert all("choices" not in meta for meta in metadata.values())  # checked against the data room's lists
    assert "digits" in DATASETS and "dirichlet" in PARTITIONERS


def test_one_data_builder_gives_each_scheme_only_its_own_knob() -> None:
    import numpy as np

    from fedsplit.data import make_federated_data
    from fedsplit.data.federated import partitioner_options
    from fedsplit.learning import Task

    knobs = {"alpha": 0.2, "shards_per_client": 3}
    assert partitioner_options({"partitioner": "dirichlet", **knobs}) == {"alpha": 0.2}
    assert partitioner_options({"partitioner": "shards", **knobs}) == {"shards_per_client": 3}
    assert partitioner_options({"partitioner": "quantity", **knobs}) == {}  # as runs always had it
    assert partitioner_options({"partitioner": "iid", **knobs}) == {}
    cfg = load_config(None, ["data.partitioner=dirichlet", "data.alpha=0.3", "seed=4", "model.name=mlp"])
    task_data, direct = Task.from_config(cfg).data, make_federated_data(cfg)
    for pid in range(cfg.num_terminals):
        assert np.array_equal(task_data.partition_indices(pid), direct.partition_indices(pid))


# --------------------------------------------------------------------------------- import graph


def _modules(folder: Path, package: str) -> dict[str, Path]:
    """Module name -> file for every ``.py`` file of a package folder (glue folders left out)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder)
        if rel.parts[0] in GLUE:  # a glue package reached through a link, not part of this folder
            continue
        parts = rel.with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        found[".".join((package, *parts))] = path
    return found


def _imports(path: Path, module: str, is_package: bool) -> Iterator[str]:
    """Every module ``path`` imports, anywhere in the file (functions, TYPE_CHECKING blocks too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)  # ``from pkg import module``


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        graph[name] = {t for t in _imports(path, name, is_package) if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


CORE_MODULES = _modules(CORE, "fedsplit")


def test_core_modules_import_without_cycles() -> None:
    # ``import fedsplit.x`` runs fedsplit/__init__ first, not an edge of the data flow
    graph = _graph(CORE_MODULES)
    graph.pop("fedsplit", None)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_core_subpackages_import_one_way() -> None:
    graph: dict[str, set[str]] = {}
    for source, targets in _graph(CORE_MODULES).items():
        if source == "fedsplit":
            continue
        graph.setdefault(_subpackage(source), set()).update(
            _subpackage(t) for t in targets if _subpackage(t) != _subpackage(source) and t != "fedsplit"
        )
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert "fedsplit.learning" not in graph.get("fedsplit.models", set())  # models come before learning


def test_core_never_imports_flower_ray_or_the_glue() -> None:
    offenders = []
    for name, path in CORE_MODULES.items():
        for target in _imports(path, name, path.name == "__init__.py"):
            top = target.split(".")[0]
            glue = target.startswith(tuple(f"fedsplit.{g}" for g in GLUE))
            if top in ("flwr", "ray") or (glue and name != "fedsplit.cli"):
                offenders.append(f"{name} imports {target}")
    assert not offenders, offenders


def test_importing_the_core_loads_neither_flower_nor_ray() -> None:
    probe = (
        "import importlib, json, sys\n"
        f"for name in {sorted(CORE_MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('flwr', 'ray') if m in sys.modules)))\n"
    )
    assert fresh_interpreter_json(probe) == []


def test_strategies_and_clients_share_record_helpers_through_the_core() -> None:
    """``clients/`` never imports ``strategies/``; ``strategies/`` imports from ``clients/`` only
    the Flower Array codec (``clients/arrays.py``), and both read records with
    :func:`fedsplit.records.record_key`."""
    imports: dict[str, set[str]] = {}
    for side in ("strategies", "clients"):
        modules = _modules(GLUE[side], f"fedsplit.{side}")
        imports[side] = {t for name, path in modules.items() for t in _imports(path, name, path.name == "__init__.py")}
    assert not {t for t in imports["clients"] if t.startswith("fedsplit.strategies")}
    from_clients = {".".join(t.split(".")[:3]) for t in imports["strategies"] if t.startswith("fedsplit.clients")}
    assert from_clients <= {"fedsplit.clients.arrays"}
    assert {"fedsplit.records.record_key"} <= imports["strategies"] & imports["clients"]


def test_the_front_door_answers_help_and_bad_input_without_importing_the_training_stack() -> None:
    """``fedsplit --help``, a command's ``--help`` and a bad configuration need only the parsers
    and the config schema: none of torch, Ray, Flower, matplotlib or scikit-learn (seconds of
    imports on 2 cores) is loaded for them (:mod:`fedsplit.lazy_exports`)."""
    probe = (
        "import contextlib, io, json, sys\n"
        "from fedsplit.cli import main\n"
        "codes = []\n"
        "for argv in (['--help'], ['simulate', '--set', 'bogus=1'], ['simulate', '--help'], ['run-app', '--help'],\n"
        "             ['pretrain', '--help'], ['catalog', 'show', '--help'], ['deploy', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            codes.append(main(argv))\n"
        "        except SystemExit as exc:\n"
        "            codes.append(exc.code)\n"
        "heavy = ('torch', 'ray', 'flwr', 'matplotlib', 'sklearn')\n"
        "print(json.dumps([codes, sorted(m for m in heavy if m in sys.modules)]))\n"
    )
    codes, loaded = fresh_interpreter_json(probe)
    assert codes == [0, 2, 0, 0, 0, 0, 0]
    assert loaded == []


def test_a_lazily_exported_name_is_the_defining_module_s_and_unknown_names_fail_as_usual() -> None:
    import fedsplit.report
    import fedsplit.transfer
    from fedsplit.learning.distill import distill
    from fedsplit.report.run_folder import shown_path

    assert fedsplit.transfer.distill is distill
    assert "distill" in vars(fedsplit.transfer)  # kept: the next read is a plain attribute
    assert fedsplit.report.shown_path is shown_path
    assert {"RoundProgress", "write_run_folder"} <= set(dir(fedsplit.report))
    with pytest.raises(AttributeError, match="module 'fedsplit.report' has no attribute 'nothing'"):
        fedsplit.report.nothing  # noqa: B018
    for package in (fedsplit.report, fedsplit.transfer):
        assert all(hasattr(package, name) for name in package.__all__)
