"""The scheduler experiments' smoke runs: rows, CSV + PNG, and every claim check passing; every
experiment script's refusal of a bad argument (one line, exit 2, before any run)."""

import importlib.util
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, files", [
    ("deng_fig3", ("fig3.csv", "fig3.png")),
    ("deng_fig4", ("fig4.csv", "fig4.png")),
    ("bench_scheduler", ("bench.csv", "bench.png")),
    ("acceptance_scheduler", ("exact_vs_brute_force.csv", "fast_vs_exact.csv", "acceptance_scheduler.png")),
])
def test_smoke_run_writes_outputs_and_passes_its_checks(name, files, tmp_path, capsys):
    code = load(name).main(["--smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for f in files:
        assert (tmp_path / f).stat().st_size > 0
    checks = [line for line in out.splitlines() if line.startswith("check ")]
    assert checks
    assert code == (1 if any(": FAIL" in c for c in checks) else 0)  # a failed check is exit status 1
    failed = [c for c in checks if ": FAIL" in c and "solved within" not in c]  # timing varies on CI
    assert not failed, failed
    assert any("=" in line and not line.startswith("check") for line in out.splitlines())


def test_a_failed_claim_is_exit_status_1(tmp_path, monkeypatch):
    # the claim checks printed FAIL but every script exited 0, so CI could not notice a broken claim
    from fedsplit.inference.experiment_io import Checks

    def failing(*args, **kwargs):
        checks = Checks()
        checks.check("a claim", False, "made to fail")
        return checks

    for name in ("deng_fig3", "deng_fig4"):
        module = load(name)
        monkeypatch.setattr(module, "check_claims", failing)
        assert module.main(["--smoke", "--out", str(tmp_path / name)]) == 1


@pytest.mark.parametrize("name, option", [
    ("deng_fig3", "--seeds"), ("deng_fig4", "--seeds"), ("bench_scheduler", "--repeats"),
    ("acceptance_scheduler", "--instances"),
])
def test_a_count_below_1_is_refused_in_one_line(name, option, tmp_path, capsys):
    # --seeds 0 was an IndexError inside numpy, --repeats 0 / --instances 0 a ValueError of min()/max()
    with pytest.raises(SystemExit) as info:
        load(name).main([option, "0", "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: '0': expected a whole number, at least 1" in err
    assert not (tmp_path / "fig3.csv").exists()


def test_bench_scale_needs_two_rounds_one_to_warm_up_one_to_time(capsys):
    # --rounds 1 divided by zero: the first round is not timed
    with pytest.raises(SystemExit) as info:
        load("bench_scale").main(["--rounds", "1"])
    assert info.value.code == 2
    assert "argument --rounds: '1': expected a whole number, at least 2" in capsys.readouterr().err


def test_smoke_keeps_an_explicit_seed_count(tmp_path):
    # --smoke used to replace --seeds by 5 without a word
    import csv

    load("deng_fig4").main(["--smoke", "--seeds", "2", "--out", str(tmp_path)])
    with open(tmp_path / "fig4.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {int(r["seeds_used"]) for r in rows} <= {1, 2} and any(r["seeds_used"] == "2" for r in rows)


@pytest.mark.parametrize("name, argv", [
    ("split_vs_fl", ["--methods", "fedavg,nope"]),
    ("bench_split", ["--workloads", "nope"]),
    ("bench_engine", ["--workloads", "mlp,nope"]),
    ("bench_driver", ["--workloads", "nope"]),
    ("bench_overlap", ["--workloads", "nope"]),
    ("orchestration", ["--methods", "nope"]),
    ("byzantine", ["--smoke", "--attacks", "none,nope"]),
    ("compression_sweep", ["--smoke", "--codecs", "nope"]),
])
def test_an_unknown_name_in_a_list_option_is_refused_before_any_run(name, argv, tmp_path, capsys, monkeypatch):
    # were KeyError tracebacks (bench_*, split_vs_fl), a ValueError after FedAvg's runs (orchestration),
    # a ConfigError after the earlier cells' runs (byzantine), or ignored under --smoke (byzantine, compression_sweep)
    module = _script(name, monkeypatch)  # bench_driver and bench_overlap import bench_engine
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        module.main([*argv, *(["--out", str(out)] if name not in ("bench_engine", "bench_driver", "bench_overlap") else [])])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "allowed" in err
    assert not out.exists()


def test_bench_codecs_refuses_reps_below_1_in_one_line(capsys):
    # --reps 0 timed the codecs zero times and ended in a StatisticsError traceback of median()
    with pytest.raises(SystemExit) as info:
        load("bench_codecs").main(["--reps", "0"])
    assert info.value.code == 2
    assert "argument --reps: '0': expected a whole number, at least 1" in capsys.readouterr().err


OUT_SCRIPTS = ("acceptance_scheduler", "bench_scheduler", "bench_split", "byzantine", "compression_sweep", "deng_fig3",
               "deng_fig4", "edgent", "faults", "orchestration", "split_vs_fl", "transfer")


@pytest.mark.parametrize("name", OUT_SCRIPTS)
def test_an_out_that_is_a_file_is_refused_in_one_line(name, tmp_path, capsys, monkeypatch):
    # deng_fig3 --smoke --out /etc/hostname ran the whole experiment, then a FileExistsError traceback
    module = _script(name, monkeypatch)  # split_vs_fl imports compression_sweep
    taken = tmp_path / "a-file"
    taken.write_text("x")
    with pytest.raises(SystemExit) as info:
        module.main(["--out", str(taken)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --out: cannot write {str(taken)!r}" in err and "is a file, not a folder" in err
    assert taken.read_text() == "x"


def test_acceptance_scheduler_columns_say_latency_or_solve_time(tmp_path):
    # it wrote no PNG, and brute_force_s / exact_s (latencies) sat next to brute_time_s (a solve time)
    import csv

    assert load("acceptance_scheduler").main(["--smoke", "--instances", "2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "acceptance_scheduler.png").stat().st_size > 10_000
    with open(tmp_path / "exact_vs_brute_force.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["instance", "N", "brute_force_latency_s", "exact_latency_s", "rel_diff", "match",
                      "brute_force_solve_s", "exact_solve_s"]
    with open(tmp_path / "fast_vs_exact.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["instance", "N", "exact_latency_s", "fast_latency_s", "gap_to_exact", "certified_gap",
                      "fast_solve_s", "exact_solve_s"]


# -- a failed check is exit status 1; --smoke prints the claims only a full-size run shows as SKIP --
def _script(name, monkeypatch):
    """Experiment ``name`` imported as a module: its folder on sys.path (scripts import each other)
    and the module in sys.modules (dataclasses look their module up)."""
    import sys

    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def _checks(out):
    return [line for line in out.splitlines() if line.startswith("check ")]


def _fake_bench_scale(monkeypatch, rss_gb, ratio):
    module = _script("bench_scale", monkeypatch)
    monkeypatch.setattr(module, "run_population", lambda size, sampled, rounds: (1.0 if size == 100 else ratio, rss_gb))
    return module, []


def _fake_byzantine(monkeypatch, signflip_fedavg, best):
    module = _script("byzantine", monkeypatch)
    acc = {("none", "fedavg"): 0.9, ("signflip", "fedavg"): signflip_fedavg}

    def run_cell(attack, defence, args):
        return {"attack": attack, "defence": defence, "final_acc": acc.get((attack, defence), best if attack == "signflip" else 0.9),
                "rejected": 0, "attackers": 2, "rounds": args.rounds}

    monkeypatch.setattr(module, "run_cell", run_cell)
    return module, ["--attacks", "none,signflip", "--defences", "fedavg,normreject"]


def _fake_transfer(monkeypatch, finetune_bytes):
    module = _script("transfer", monkeypatch)
    accs = {"scratch": 0.9, "finetune": 0.8, "student-scratch": 0.7, "student-distilled": 0.6}
    byts = {"scratch": 1000, "finetune": finetune_bytes, "student-scratch": 100, "student-distilled": 100}
    curves = {m: [{"method": m, "round": 1, "accuracy": accs[m], "uplink_bytes": byts[m], "client_flops": 1}] for m in accs}
    def run(args):
        Path(args.out).mkdir(parents=True, exist_ok=True)
        return curves

    monkeypatch.setattr(module, "run", run)
    return module, []


def _fake_bench_split(monkeypatch, overhead, diff):
    import ray

    module = _script("bench_split", monkeypatch)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no Ray of its own
    monkeypatch.setattr(module, "bench", lambda name, terminals, passes, cpus: {
        "engine_s": overhead, "loop_s": 1.0, "split_overhead": overhead, "batches": 4, "diff": diff})
    return module, []


class _NoEngine:
    """Stands in for an experiment's SharedEngine (no Ray, no actors): the fakes measure nothing."""

    def __init__(self, *args):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def simulate(self, cfg):
        return None


def _fake_split_vs_fl(monkeypatch, sl_acc, v1_flops):
    import contextlib

    module = _script("split_vs_fl", monkeypatch)
    table = {"fedavg": (0.9, 100, 1.0), "splitfed-v1": (0.9, v1_flops, 1.0), "sl-vanilla": (sl_acc, 5, 1.5)}

    def measure(method, mode, std, outcome):
        acc, flops, sim = table[method]
        return module.MethodRun(method, mode, std, [acc], [10], [sim], flops, 10, sim, 0.1, 0)

    monkeypatch.setattr(module, "ray_session", lambda cpus: contextlib.nullcontext())
    monkeypatch.setattr(module, "SharedEngine", _NoEngine)
    monkeypatch.setattr(module, "measure", measure)
    monkeypatch.setattr(module, "step_client_share", lambda cfg, mode: 0.03)
    return module, ["--methods", "fedavg,splitfed-v1,sl-vanilla", "--rounds", "1", "--terminals", "4"]


def _fake_compression_sweep(monkeypatch, identity_acc, topk_payload):
    import contextlib

    module = _script("compression_sweep", monkeypatch)

    def run_partition(settings, partition, codecs, out_dir, engine):
        accs = {"identity": identity_acc, "topk-ef": identity_acc - 0.2}
        runs = [module.CodecRun(partition, c, [accs[c]] * settings.rounds, [1.0] * settings.rounds,
                                [100 if c == "identity" else topk_payload] * settings.rounds, [100] * settings.rounds,
                                [120] * settings.rounds, 10, 0, 0.1) for c in codecs]
        for run in runs:
            module.print_codec_line(run, runs[0])
        return runs

    monkeypatch.setattr(module, "ray_session", lambda cpus: contextlib.nullcontext())
    monkeypatch.setattr(module, "SharedEngine", _NoEngine)
    monkeypatch.setattr(module, "run_partition", run_partition)
    monkeypatch.setattr(module, "measure_costs", lambda codecs, reps, cfg: [
        module.Cost(setting, c, 10.0, 10.0, 100.0) for setting in (module.BENCH_SETTING, module.SWEPT_SETTING) for c in codecs])
    return module, ["--codecs", "identity,topk-ef", "--partitions", "iid"]


# (script, fake, full-size claims failing only, a claim that holds at any size failing too)
EXIT_CASES = [
    ("bench_scale", _fake_bench_scale, {"rss_gb": 1.0, "ratio": 2.0}, {"rss_gb": 5.0, "ratio": 1.0}),
    ("byzantine", _fake_byzantine, {"signflip_fedavg": 0.1, "best": 0.5}, {"signflip_fedavg": 0.85, "best": 0.9}),
    ("transfer", _fake_transfer, {"finetune_bytes": 900}, None),  # every claim of transfer needs the full run
    ("bench_split", _fake_bench_split, {"overhead": 2.0, "diff": 0.0}, {"overhead": 1.0, "diff": 1.0}),
    ("split_vs_fl", _fake_split_vs_fl, {"sl_acc": 0.5, "v1_flops": 5}, {"sl_acc": 0.9, "v1_flops": 50}),
    ("compression_sweep", _fake_compression_sweep, {"identity_acc": 0.5, "topk_payload": 1}, {"identity_acc": 0.95, "topk_payload": 2}),
]


@pytest.mark.parametrize("name, fake, full_size_fails, any_size_fails", EXIT_CASES, ids=[c[0] for c in EXIT_CASES])
def test_a_failed_check_is_exit_status_1_and_smoke_skips_only_full_size_claims(
        name, fake, full_size_fails, any_size_fails, tmp_path, monkeypatch, capsys):
    # these scripts printed FAIL (or ok=False / pass=False) and exited 0, so nothing could notice
    def out(folder):
        return [] if name == "bench_scale" else ["--out", str(tmp_path / folder)]  # bench_scale writes no files

    module, argv = fake(monkeypatch, **full_size_fails)
    assert module.main([*argv, *out("full")]) == 1
    checks = _checks(capsys.readouterr().out)
    assert any(": FAIL (" in c for c in checks), checks

    module, argv = fake(monkeypatch, **full_size_fails)
    assert module.main(["--smoke", *argv, *out("smoke")]) == 0
    checks = _checks(capsys.readouterr().out)
    assert any(": SKIP (smoke: " in c for c in checks) and not any(": FAIL" in c for c in checks), checks

    if any_size_fails is not None:
        module, argv = fake(monkeypatch, **any_size_fails)
        assert module.main(["--smoke", *argv, *out("smoke2")]) == 1
        checks = _checks(capsys.readouterr().out)
        assert any(": FAIL (" in c for c in checks), checks


@pytest.mark.parametrize("actors", ["0", "100000"])
def test_bench_engine_refuses_an_actor_count_the_machine_cannot_give(actors, capsys, monkeypatch):
    module = _script("bench_engine", monkeypatch)
    with pytest.raises(SystemExit) as info:
        module.main(["--workloads", "mlp", "--actors", actors])
    assert info.value.code == 2
    assert f"argument --actors: {actors} is not between 1 and the" in capsys.readouterr().err


def test_bench_engine_collector_time_counts_the_collections_inside_its_block(monkeypatch):
    import gc

    module = _script("bench_engine", monkeypatch)
    with module.CollectorTime() as outside:
        pass
    with module.CollectorTime() as inside:
        gc.collect(1)
        gc.collect()  # a full collection: generation 2
    assert (outside.seconds, outside.full) == (0.0, 0)
    assert inside.seconds > 0 and inside.full == 1
    assert outside._callback not in gc.callbacks and inside._callback not in gc.callbacks  # removed on exit
