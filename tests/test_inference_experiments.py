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
    import sys

    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # bench_driver and bench_overlap import bench_engine
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # compression_sweep's dataclasses look their module up
    spec.loader.exec_module(module)
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
    import sys

    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # split_vs_fl imports compression_sweep
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
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
