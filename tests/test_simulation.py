"""End-to-end simulations on both engines: outputs, the per-device clock, determinism, plug-ins."""

from __future__ import annotations

import argparse
import csv
import json
import textwrap

import pytest

from fedsplit.config import load_config
from fedsplit.devices import builtin_profiles
from fedsplit.learning import config_to_json, task_for
from fedsplit.simulation.runner import simulate
from tests.conftest import small_overrides
from tests.test_clock import mlp_train_flops

ENGINES = ["fedsplit", "flower"]


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("engine", ENGINES)
def test_cli_simulate_writes_run_folder(tmp_path, engine, ray_session, fedsplit_main):
    args = ["simulate", "--engine", engine]
    for item in small_overrides(tmp_path):
        args += ["--set", item]
    ray_address = ray_session.get_runtime_context().gcs_address
    proc = fedsplit_main(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warn" not in proc.stderr.lower(), proc.stderr[-3000:]
    # the caller's Ray session is still up, on either engine (runner.flower_keeps_callers_ray)
    assert ray_session.is_initialized() and ray_session.get_runtime_context().gcs_address == ray_address
    run = tmp_path / "run"
    for name in ("config.toml", "rounds.csv", "clients.csv", "summary.json", "plots/accuracy.png", "plots/bytes_energy_by_device.png", "checkpoints/final.pt"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["engine"] == engine
    assert 0.5 < summary["final_metrics"]["accuracy"] <= 1.0
    rounds = read_rows(run / "rounds.csv")
    assert [int(r["round"]) for r in rounds] == [1, 2]
    assert "final_accuracy=" in proc.stdout


def test_device_classes_differ_as_profiles_say(tmp_path, ray_session):
    """Compute time = exact FLOPs / profile FLOP/s; a slower class is proportionally slower."""
    cfg = load_config(None, small_overrides(tmp_path, rounds=2, **{"train.batch_size": 16}))
    outcome = simulate(cfg)
    profiles = builtin_profiles()
    task = task_for(config_to_json(cfg))
    rows = [r for r in read_rows(outcome.run_dir / "clients.csv") if r["phase"] == "train"]
    assert rows and all(r["status"] == "ok" for r in rows)
    per_flop_s = {}
    for row in rows:
        pid = int(row["client_id"])
        n = len(task.data.partition(pid)[0])
        batches = [16] * (n // 16) + ([n % 16] if n % 16 else [])
        expected_flops = cfg.train.local_epochs * sum(mlp_train_flops(b) for b in batches)
        assert int(row["flops"]) == expected_flops
        profile = profiles[row["device"]]
        assert float(row["compute_s"]) == pytest.approx(expected_flops / profile.flops_per_s, rel=1e-12)
        per_flop_s[row["device"]] = float(row["compute_s"]) / expected_flops
        assert int(row["bytes_up"]) > 4810 * 4  # the MLP's fp32 weights are in the payload
    ratio = per_flop_s["raspberry-pi-4"] / per_flop_s["laptop"]
    assert ratio == pytest.approx(profiles["laptop"].flops_per_s / profiles["raspberry-pi-4"].flops_per_s)
    summary = outcome.summary
    assert summary["devices"]["raspberry-pi-4"]["mean_compute_s"] > summary["devices"]["laptop"]["mean_compute_s"]


def test_deadline_drops_stragglers(tmp_path, ray_session):
    overrides = small_overrides(tmp_path, **{"devices": "{smartphone-low = 2, laptop = 2}", "clock.round_deadline_s": 0.2})
    outcome = simulate(load_config(None, overrides))
    rows = outcome.session.ledger.rows
    stragglers = [r for r in rows if r.status == "straggler"]
    assert stragglers and all(r.device == "smartphone-low" and r.total_s > 0.2 for r in stragglers)
    assert all(r.total_s <= 0.2 for r in rows if r.status == "ok")
    for record in outcome.session.ledger.rounds.values():
        assert record.stragglers >= 1
        assert record.sim_s == pytest.approx(0.2 + record.server_s)


def test_same_seed_same_metrics_and_identical_ledgers_across_engines(tmp_path, ray_session):
    outcomes = []
    for i, engine in enumerate(["fedsplit", "fedsplit", "flower"]):
        overrides = small_overrides(tmp_path, run_name=f"r{i}", **{"engine.name": engine, "devices": "{raspberry-pi-4 = 3, smartphone-mid = 3}", "strategy.fraction_train": 0.5})
        outcomes.append(simulate(load_config(None, overrides)))
    key = lambda o: [(r.round, r.phase, r.client_id, r.device, r.status, r.flops, r.bytes_up, r.bytes_down, r.compute_s, r.comm_s, r.energy_j) for r in o.session.ledger.rows]
    assert key(outcomes[0]) == key(outcomes[1]) == key(outcomes[2])
    metrics = [o.summary["final_metrics"] for o in outcomes]
    assert metrics[0] == metrics[1] == metrics[2]
    assert len({r.client_id for r in outcomes[0].session.ledger.rows_of(1)}) == 3  # half of 6 sampled


def test_user_strategy_plugs_in_by_import_path(tmp_path, monkeypatch, ray_session):
    module = tmp_path / "my_strategies.py"
    module.write_text(textwrap.dedent(
        """
        from flwr.serverapp.strategy import FedAvg

        CALLS = []

        class CountingFedAvg(FedAvg):
            def __init__(self, tag="x", **kwargs):
                super().__init__(**kwargs)
                self.tag = tag

            def aggregate_train(self, server_round, replies):
                replies = list(replies)
                CALLS.append((self.tag, server_round, len(replies)))
                return super().aggregate_train(server_round, replies)

        class NotAStrategy:
            pass
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_strategies

    overrides = small_overrides(tmp_path, **{"strategy.name": "my_strategies:CountingFedAvg", "strategy.params": "{tag = 'mine'}"})
    simulate(load_config(None, overrides))
    assert [c[:2] for c in my_strategies.CALLS] == [("mine", 1), ("mine", 2)]
    assert all(c[2] >= 1 for c in my_strategies.CALLS)

    from fedsplit.strategies import StrategyLoadError, load_strategy_class

    with pytest.raises(StrategyLoadError, match="is not a subclass of flwr.serverapp.strategy.Strategy"):
        load_strategy_class("my_strategies:NotAStrategy")
    with pytest.raises(StrategyLoadError, match="cannot import module 'no_such_module'"):
        load_strategy_class("no_such_module:X")


@pytest.mark.ends_ray
def test_cli_reports_unimportable_strategy_before_ray_starts(tmp_path, fedsplit_main):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    args = ["simulate"] + [x for item in small_overrides(tmp_path, **{"strategy.name": "nope.mod:Strat"}) for x in ("--set", item)]
    proc = fedsplit_main(*args)
    assert proc.returncode == 2
    assert "strategy.name = 'nope.mod:Strat': cannot import module 'nope.mod'" in proc.stderr
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"strategy.name": "fedprox", "strategy.params": "{proximal_mu = 'x'}"},
         "strategy.params.proximal_mu = 'x': FedProx expects a number (its default is 0.0)"),
        ({"strategy.name": "krum", "strategy.params": "{num_malicious_nodes = 1.5}"},
         "strategy.params.num_malicious_nodes = 1.5: Krum expects an integer (its default is 0)"),
        ({"strategy.params": "{fraction_train = 0.5}"}, "strategy.params.fraction_train: set strategy.fraction_train instead"),
        ({"strategy.name": "bulyan", "strategy.params": "{num_malicious_nodes = 1}"},
         "it aggregates a round only with at least 7 replies (Bulyan: 4 * num_malicious_nodes + 3), and the population has 4 terminals"),
    ],
)
def test_strategy_params_that_would_fail_every_round_are_refused_before_the_run(tmp_path, fedsplit_main, sets, message):
    args = ["simulate", "--dry-run"] + [x for item in small_overrides(tmp_path, **sets) for x in ("--set", item)]
    proc = fedsplit_main(*args)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("fedsplit simulate: error: config: ") and message in line


def test_python_api_refuses_a_strategy_that_can_never_aggregate_before_training(tmp_path):
    """The check ``fedsplit simulate`` makes is the run's own: a script calling ``simulate`` gets it too."""
    from fedsplit.clients.app import make_client_app
    from fedsplit.devices import Population, resolve_profiles
    from fedsplit.simulation.engine import SerialEngine
    from fedsplit.strategies import StrategyLoadError

    cfg = load_config(None, small_overrides(tmp_path, **{"strategy.name": "bulyan", "strategy.params": "{num_malicious_nodes = 1}"}))
    engine = SerialEngine(make_client_app(config_json=config_to_json(cfg)), Population(cfg.devices, resolve_profiles(cfg.profiles)))
    with pytest.raises(StrategyLoadError, match=r"at least 7 replies .* the population has 4 terminals: every round would be empty"):
        simulate(cfg, engine=engine)
    assert engine.contexts == {}  # no terminal was sent anything
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    ("mode", "named"),
    [("fl", "fl (strategy fedavg)"), ("splitfed-v1", "splitfed-v1"), ("sl-vanilla", "sl-vanilla"),
     ("fedbuff", "fedbuff"), ("gossip", "gossip")],
)
def test_dry_run_names_the_training_mode_and_a_strategy_only_where_it_runs_one(tmp_path, fedsplit_main, mode, named):
    args = ["simulate", "--dry-run"] + [x for item in small_overrides(tmp_path, **{"training.mode": mode}) for x in ("--set", item)]
    proc = fedsplit_main(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        f"# config OK: 2 rounds of {named} on 4 terminals (engine fedsplit); --dry-run started nothing"
    )
    if mode != "fl":  # a mode without a strategy refuses a strategy.name it would ignore, without importing it
        proc = fedsplit_main(*args, "--set", "strategy.name=nope.mod:Strat")
        assert proc.returncode == 2
        assert proc.stderr.strip() == (f"fedsplit simulate: error: config: strategy.name = 'nope.mod:Strat': has no effect with "
                                       f"training.mode = '{mode}' (only training.mode = 'fl' runs a strategy and compresses updates)")


@pytest.mark.parametrize("rounds", [1, 3])
def test_run_plots_tick_rounds_at_whole_numbers(tmp_path, monkeypatch, rounds):
    from fedsplit.ledger import Ledger, LedgerRow, RoundRecord
    from fedsplit.report import plots

    ledger = Ledger()
    for r in range(1, rounds + 1):
        ledger.rounds[r] = RoundRecord(
            round=r, online=2, selected=2, aggregated=2, stragglers=0, failed=0, rejected=0, flops=1, bytes_up=10**6,
            bytes_down=10**6, energy_j=1.0, server_s=0.1, sim_s=1.5, metrics={"accuracy": 0.5 + r / 10},
        )
        for device in ("laptop", "raspberry-pi-4"):
            ledger.add(LedgerRow(r, "train", 0, device, "ok", "", 1, 0.1, 10**6, 10**6, 0.2, 0.5 * r))
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)  # keep the figures to look at their axes
    paths = plots.plot_run(ledger, tmp_path)
    assert [p.name for p in paths] == ["accuracy.png", "bytes_energy_by_device.png"] and len(figures) == 2
    round_axes = [ax for fig in figures for ax in fig.axes if ax.get_xlabel() == "round"]
    assert len(round_axes) == 3  # accuracy, MB and energy per round
    for ax in round_axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    monkeypatch.undo()
    for fig in figures:
        plots.plt.close(fig)


def test_nan_updates_are_rejected_and_the_run_goes_on(tmp_path, ray_session):
    """A diverging terminal's NaN/Inf update is refused before aggregation and counted (the
    empty-round stop is switched off here to see every round's rows)."""
    overrides = small_overrides(tmp_path, **{"train.lr": 1e30, "train.momentum": 0.0, "training.max_empty_rounds": 0})
    outcome = simulate(load_config(None, overrides))
    train_rows = [r for r in outcome.session.ledger.rows if r.phase == "train"]
    assert train_rows and all(r.status == "rejected" for r in train_rows)
    assert all("finite" in r.reason.lower() or "nan" in r.reason.lower() or "inf" in r.reason.lower() for r in train_rows)
    assert outcome.summary["rejected"] == len(train_rows)
    import torch

    assert all(torch.isfinite(v).all() for v in outcome.session.final_state.values())


def test_run_that_aggregates_nothing_fails_loudly(tmp_path, ray_session, capsys):
    """Every update rejected: the run stops after 2 empty rounds, exit 3, one line with the reason."""
    from fedsplit.simulation.cli import cmd_simulate

    overrides = small_overrides(tmp_path, **{"train.lr": 1e30, "train.momentum": 0.0, "rounds": 5})
    args = argparse.Namespace(config=None, set=overrides, engine=None)
    assert cmd_simulate(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("fedsplit simulate: error: run: stopped after round 2: 2 consecutive rounds aggregated no update")
    assert "NaN/Inf" in err[0]


def test_a_run_shorter_than_the_empty_round_limit_that_never_aggregates_fails_too(tmp_path, capsys):
    """One round, every update rejected: fewer rounds than training.max_empty_rounds, still exit 3."""
    from fedsplit.simulation.cli import cmd_simulate

    overrides = small_overrides(tmp_path, **{"train.lr": 1e30, "train.momentum": 0.0, "rounds": 1, "engine.name": "serial"})
    assert cmd_simulate(argparse.Namespace(config=None, set=overrides, engine=None)) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fedsplit simulate: error: run: the run ended after round 1 without aggregating any update; most common reason: ")


def test_batchnorm_integer_buffers_survive_averaging(tmp_path, ray_session):
    """The default model has BatchNorm: its int64 counters must not make later updates 'invalid'."""
    overrides = small_overrides(tmp_path, **{"model.name": "cnn", "rounds": 3})
    outcome = simulate(load_config(None, overrides))
    assert all(r.status == "ok" for r in outcome.session.ledger.rows)
    assert outcome.session.final_state["stem.1.num_batches_tracked"].dtype.is_floating_point is False
    assert outcome.summary["final_metrics"]["accuracy"] > 0.8


def test_data_that_cannot_be_built_is_one_line_before_any_run_folder(tmp_path, fedsplit_main):
    """200 terminals from 1437 digits at alpha = 0.01: some terminal gets no sample. It was a
    traceback after the run folder (config.toml, empty plots/ and checkpoints/) was made."""
    sets = {"engine.name": "serial", "data.partitioner": "dirichlet", "data.alpha": 0.01, "devices": "{laptop = 200}"}
    args = ["simulate"] + [x for item in small_overrides(tmp_path, **sets) for x in ("--set", item)]
    proc = fedsplit_main(*args)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("fedsplit simulate: error: data: num_partitions=200 with alpha=0.01 left a partition with fewer than")
    assert line.endswith("allowed: fewer partitions (terminals) or a larger alpha")
    assert not any(p.is_dir() for p in tmp_path.iterdir())
