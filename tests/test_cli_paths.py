"""A user's paths and addresses: checked before any work, reported in one line, nothing half made."""

from __future__ import annotations

import argparse
import socket
import subprocess

import pytest

from fedsplit.config import ConfigError, load_config
from fedsplit.config.errors import RayUnreachableError
from fedsplit.output_paths import unwritable_reason
from fedsplit.pipeline import load_pipeline
from tests.conftest import REPO, fedsplit_cmd


def test_unwritable_reason_names_the_part_of_the_path_that_blocks_it(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert unwritable_reason(tmp_path / "new" / "deeper", folder=True) is None  # made on the way
    assert unwritable_reason(tmp_path / "out.json", folder=False) is None
    assert unwritable_reason(afile, folder=False) is None  # overwritten, as a file
    assert unwritable_reason(afile, folder=True) == f"{str(afile)!r} is a file, not a folder"
    assert unwritable_reason(afile / "x" / "y.json", folder=False) == f"{str(afile)!r} is a file, not a folder"
    assert unwritable_reason(tmp_path, folder=False) == f"{str(tmp_path)!r} is a folder, not a file"


def test_outputs_under_a_file_fail_before_any_work_with_one_line(fedsplit_main, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    run = fedsplit_main("simulate", "--set", f"out_dir={afile}", "--set", "rounds=1")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"fedsplit simulate: error: config: out_dir = {str(afile)!r}: cannot write there ({str(afile)!r} is a file, not a folder)"
    assert fedsplit_main("simulate", "--set", f"out_dir={afile}/runs", "--dry-run").returncode == 2
    for args in (["pretrain", "--out", f"{afile}/b.pt", "--epochs", "1"], ["scenario", "--terminals", "2", "--out", f"{afile}/s.json"],
                 ["catalog", "build", str(tmp_path), "--out", f"{afile}/c.json"]):
        run = fedsplit_main(*args)
        assert run.returncode == 2 and f"cannot write '{afile}/" in run.stderr and "is a file, not a folder" in run.stderr, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing was made


def test_a_directory_given_as_config_file_is_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a TOML file"):
        load_config(tmp_path)


def test_a_path_error_while_writing_is_one_line_not_a_traceback(monkeypatch, capsys):
    import fedsplit.cli as cli

    def fails(args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/locked/run/rounds.csv")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=fails, command="x")
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "fedsplit x: error: /locked/run/rounds.csv: Permission denied\n"


@pytest.mark.parametrize("address", [":6379", "head:", "head:port", "10.0.0.1:70000", "10.0.0.1", "ray://:10001"])
def test_a_malformed_ray_address_is_a_config_error(address):
    with pytest.raises(ConfigError, match=r"engine.ray_address = .*expected HOST:PORT"):
        load_config(None, [f"engine.ray_address={address!r}"])


@pytest.mark.parametrize("address", ["", "auto", "192.168.1.10:6379", "head-node:6379", "ray://head:10001", "[::1]:6379"])
def test_well_formed_ray_addresses_are_accepted(address):
    assert load_config(None, [f"engine.ray_address={address!r}"]).engine.ray_address == address


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_a_ray_address_where_nothing_listens_fails_fast_and_makes_no_run_folder(tmp_path):
    from fedsplit.simulation.engine import check_ray_reachable

    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(RayUnreachableError, match="no Ray cluster answers there"):
        check_ray_reachable(address, timeout_s=2.0)
    proc = subprocess.run(fedsplit_cmd("simulate", "--set", f"engine.ray_address='{address}'", "--set", f"out_dir='{tmp_path}'"),
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"fedsplit simulate: error: engine.ray_address = '{address}': no Ray cluster answers there")
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


PIPELINE = """
name = "p"
out_dir = "runs"
base_config = "{base}"
[family]
architecture = "cnn"
sizes = [[5, 0.25]]
"""


def test_a_pipeline_finds_its_base_config_beside_it_from_any_folder(tmp_path, monkeypatch):
    configs, elsewhere = tmp_path / "configs", tmp_path / "elsewhere"
    configs.mkdir()
    elsewhere.mkdir()
    (configs / "base.toml").write_text("rounds = 3\n")
    (configs / "p.toml").write_text(PIPELINE.format(base="base.toml"))
    monkeypatch.chdir(elsewhere)
    assert load_pipeline(configs / "p.toml").base["rounds"] == 3
    # as before: a path relative to the working directory still works, and --set base_config too
    (elsewhere / "mine.toml").write_text("rounds = 4\n")
    (configs / "q.toml").write_text(PIPELINE.format(base="mine.toml"))
    assert load_pipeline(configs / "q.toml").base["rounds"] == 4
    assert load_pipeline(configs / "p.toml", {"base_config": "mine.toml"}).base["rounds"] == 4
    (configs / "r.toml").write_text(PIPELINE.format(base="missing.toml"))
    with pytest.raises(ConfigError, match="base_config = .*missing.toml.*no such file"):
        load_pipeline(configs / "r.toml")


def test_ctrl_c_prints_one_line_and_for_simulate_how_to_resume(monkeypatch, capsys) -> None:
    import fedsplit.simulation.cli as simulation_cli
    from fedsplit.cli import main

    def interrupted(args):  # noqa: ANN001, ANN202 - stands for a run stopped by Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(simulation_cli, "cmd_simulate", interrupted)
    assert main(["simulate"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedsplit simulate: interrupted; the run folder keeps every finished round: continue with "
                   "`fedsplit simulate --resume RUN_DIR`"]


def test_every_error_line_names_the_sub_command_as_argparse_does() -> None:
    from fedsplit.cli import build_parser
    from fedsplit.cli_errors import command_of

    parser = build_parser()
    assert command_of(parser.parse_args(["simulate"])) == "simulate"
    assert command_of(parser.parse_args(["deploy", "certs", "--out", "x", "--node", "a"])) == "deploy certs"
    assert command_of(parser.parse_args(["catalog", "show", "c.json"])) == "catalog show"
    assert command_of(parser.parse_args(["run-app", "pkg.mod:server", "pkg.mod:client", "--nodes", "2"])) == "run-app"
