"""What a run prints: paths relative to the working directory, plain progress lines off a terminal,
and none of the Ray and Flower warnings that say nothing about the run."""

from __future__ import annotations

import inspect
import io
import os
import warnings
from pathlib import Path

from rich.console import Console

from fedsplit.ledger import Ledger, LedgerRow, RoundRecord
from fedsplit.report import RoundProgress, print_summary, shown_path, summarize, table_console
from fedsplit.report.console import UNBOUNDED_WIDTH


def test_shown_path_is_relative_below_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "results" / "fig.csv") == str(Path("results") / "fig.csv")
    outside = tmp_path.parent / "elsewhere.csv"
    assert shown_path(outside) == str(outside.resolve())


def _round(k: int) -> RoundRecord:
    """A finished round with a long status (wider than an 80-column console)."""
    return RoundRecord(
        round=k, online=10, selected=10, aggregated=10, stragglers=0, failed=0, rejected=0, flops=10**9,
        bytes_up=123_456_789, bytes_down=123_456_789, energy_j=12345.678, server_s=0.1, sim_s=12345.67,
        metrics={"accuracy": 0.5 + k / 100},
    )


def test_progress_off_a_terminal_is_one_plain_line_per_round():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=40)
    with RoundProgress(10, console=console) as progress:
        for k in (1, 2, 10):
            progress.on_round(_round(k), sim_elapsed_s=100.0 * k)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["round 1/10", "round 2/10", "round 10/10"]
    assert lines[-1] == (
        "round 10/10: acc=0.6000 sim=12345.67s (total 1000.0s) up=123.46MB E=12345.68J agg=10/10"
    )
    assert "…" not in out.getvalue() and "━" not in out.getvalue()  # no bar, no truncated tail


def test_a_resumed_runs_bar_starts_at_the_rounds_already_done():
    out = _Tty()
    console = Console(file=out, force_terminal=True, width=120)
    with RoundProgress(10, console=console, done_rounds=6) as progress:
        progress.on_round(_round(7), sim_elapsed_s=700.0)
    assert "7/10" in out.getvalue() and "1/10" not in out.getvalue()


def test_a_round_the_server_did_not_evaluate_shows_no_accuracy():
    out = io.StringIO()
    record = _round(1)
    record.metrics.clear()  # training.eval_every skipped this round
    with RoundProgress(3, console=Console(file=out, force_terminal=False)) as progress:
        progress.on_round(record, sim_elapsed_s=1.0)
    assert out.getvalue().startswith("round 1/3: acc=- sim=") and "nan" not in out.getvalue()


def test_progress_disabled_prints_nothing():
    out = io.StringIO()
    with RoundProgress(2, enabled=False, console=Console(file=out, force_terminal=False)) as progress:
        progress.on_round(_round(1), sim_elapsed_s=1.0)
    assert out.getvalue() == ""


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_table_console_is_unbounded_off_a_terminal_and_the_terminals_width_on_one(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert table_console(file=io.StringIO()).width == UNBOUNDED_WIDTH  # a pipe or a file: no 80-column cut
    assert table_console(file=_Tty()).width == 100
    assert table_console(60, file=io.StringIO()).width == 60 and table_console(60, file=_Tty()).width == 60


def test_closing_tables_print_in_full_off_a_terminal_and_say_the_device_columns_are_means(capsys):
    ledger = Ledger()
    ledger.rounds[1] = _round(1)
    for client, device in enumerate(["laptop"] * 4 + ["a-device-class-with-a-long-profile-name"]):
        ledger.add(LedgerRow(1, "train", client, device, "ok", "", 10, 0.25, 1000, 1000, 0.5, 0.125))
    ledger.add(LedgerRow(1, "evaluate", 0, "laptop", "ok", "", 10, 9.0, 1000, 1000, 9.0, 9.0))  # not a train exchange
    summary = summarize(ledger, wall_s=3.0)
    run_dir = "/a/run/folder/whose/path/alone/is/wider/than/eighty/columns/of/a/default/console/run-1"
    print_summary(summary, run_dir)  # the default console, on pytest's captured stdout: not a terminal
    out = capsys.readouterr().out
    assert "…" not in out and run_dir in out.replace("\n", "").replace(" ", "")
    header = next(line for line in out.splitlines() if "┃" in line and "exchanges" in line)
    cells = [c.strip() for c in header.strip("┃ ").split("┃")]
    assert cells == ["device", "exchanges", "mean compute s", "mean comm s", "mean energy J", "total energy J", "stragglers"]
    laptop = next(line for line in out.splitlines() if "│" in line and "laptop" in line)
    assert [c.strip() for c in laptop.strip("│ ").split("│")] == ["laptop", "4", "0.2500", "0.5000", "0.1250", "0.5000", "0"]
    assert "a-device-class-with-a-long-profile-name" in out and "mean = per train exchange" in out
    assert summary["devices"]["laptop"] == {  # summary.json keeps its per-exchange means
        "exchanges": 4, "mean_compute_s": 0.25, "mean_comm_s": 0.5, "mean_energy_j": 0.125, "mean_bytes_up": 1000.0, "stragglers": 0,
    }


def test_quiet_ray_filters_the_tip_ray_really_prints_and_keeps_gpus_from_cpu_actors(monkeypatch):
    import ray._private.worker

    from fedsplit.simulation.ray_env import RAY_ACCEL_TIP, quiet_ray

    tip = "Tip: In future versions of Ray, Ray will no longer override accelerator "
    assert tip in inspect.getsource(ray._private.worker.init)  # a new Ray rewords it: update RAY_ACCEL_TIP
    monkeypatch.delenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_ray()
        warnings.warn(tip + "visible devices env var if num_gpus=0 ...", FutureWarning)
    assert caught == [] and tip.startswith(RAY_ACCEL_TIP)
    assert os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"  # num_gpus=0 actors see no GPU


def test_the_flower_engine_filters_the_deprecation_flower_really_logs():
    import flwr.simulation.run_simulation as flower_run_simulation

    from fedsplit.simulation import runner

    assert "The `run_simulation` function is deprecated" in inspect.getsource(flower_run_simulation)
    assert "`run_simulation` function is deprecated" in inspect.getsource(runner.run_on_flower_engine)


def test_summary_separates_the_first_rounds_start_up_from_the_later_rounds_wall_time(capsys):
    import dataclasses

    ledger = Ledger()
    for k, wall_s in ((1, 6.0), (2, 0.25), (3, 0.35)):  # the first round also starts the engine
        ledger.rounds[k] = dataclasses.replace(_round(k), wall_s=wall_s)
    summary = summarize(ledger, wall_s=6.6)
    assert abs(summary["mean_round_wall_s"] - 2.2) < 1e-12
    assert summary["first_round_wall_s"] == 6.0
    assert abs(summary["mean_round_wall_after_first_s"] - 0.30) < 1e-12
    print_summary(summary, "run")
    out = capsys.readouterr().out
    assert "first wall round, with start-up (s)" in out and "mean wall round after the first (s)" in out and "0.300" in out
    ledger.rounds = {1: ledger.rounds[1]}  # one round: nothing to tell apart
    assert "first_round_wall_s" not in summarize(ledger, wall_s=6.0)
