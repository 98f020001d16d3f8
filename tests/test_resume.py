"""Checkpoint and resume: a run stopped at any moment and resumed ends bitwise equal to one that
was never stopped (weights, metrics, simulated ledger columns)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from fedsplit.config import load_config
from fedsplit.simulation import server_app
from fedsplit.simulation.checkpoint import KILL_ENV, RESUME_FILE, ResumePointError, read_resume_point
from fedsplit.simulation.engine import SerialEngine
from fedsplit.simulation.runner import simulate
from tests.conftest import REPO, fedsplit_cmd, free_port, run_child, small_overrides

ROUNDS = 3
WALL_COLUMNS = ("wall_s",)
"""Measured on this machine, not simulated: the only columns a resumed run may change."""


def overrides(tmp_path: Path, name: str, **extra: object) -> list[str]:
    base = {"engine.name": "serial", "rounds": ROUNDS, "run_name": name, "train.batch_size": 128}
    return small_overrides(tmp_path, **{**base, **extra})


def table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in WALL_COLUMNS} for row in csv.DictReader(fh)]


#: What a run's summary says about its engine (``engine.describe()``), not about its training.
ENGINE_KEYS = ("engine", "actors", "actor_restarts", "ray_address", "ray_nodes")


def assert_same_run(a: Path, b: Path, engine_keys: tuple[str, ...] = ()) -> None:
    """Bitwise-equal final weights, the same rounds.csv and clients.csv (simulated columns) and
    the same summary apart from wall times (and ``engine_keys``: runs on different engines)."""
    wa = torch.load(a / "checkpoints" / "final.pt")
    wb = torch.load(b / "checkpoints" / "final.pt")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"final weights differ in {key}"
    assert table(a / "rounds.csv") == table(b / "rounds.csv")
    assert table(a / "clients.csv") == table(b / "clients.csv")
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    for s in (sa, sb):
        for key in ("wall_time_s", "mean_round_wall_s", "first_round_wall_s", "mean_round_wall_after_first_s", *engine_keys):
            s.pop(key, None)
    assert sa == sb


class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing on the way may catch it)."""


def run_until_killed(cfg, monkeypatch, *, after_checkpoint: int | None = None, in_round: int | None = None) -> None:  # noqa: ANN001
    """Run ``cfg`` and stop dead right after the resume point of round ``after_checkpoint`` was
    written, or in the middle of round ``in_round`` (after its first terminal's message)."""
    if after_checkpoint is not None:
        original = server_app.RunSession.resume_point

        def capture_then_die_after_writing(self, server_round, protocol, grid):  # noqa: ANN001, ANN202
            write = original(self, server_round, protocol, grid)

            def write_then_die() -> None:
                write()
                if server_round == after_checkpoint:
                    raise Killed

            return write_then_die

        monkeypatch.setattr(server_app.RunSession, "resume_point", capture_then_die_after_writing)
    if in_round is not None:
        original_execute = SerialEngine.execute

        def execute_then_die(self, messages, timeout=None, measured=None, on_replies=None):  # noqa: ANN001, ANN202
            replies = original_execute(self, messages[:1], timeout, measured, on_replies)
            if self._round() == in_round:
                raise Killed
            return replies + original_execute(self, messages[1:], timeout, measured, on_replies)

        monkeypatch.setattr(SerialEngine, "execute", execute_then_die)
        original_run_server = server_app.run_server

        def run_server(grid, session, partition_of=None):  # noqa: ANN001, ANN202
            grid.engine._round = lambda: session.grid.current_round if session.grid else 0
            return original_run_server(grid, session, partition_of)

        monkeypatch.setattr("fedsplit.simulation.runner.run_server", run_server)
    with pytest.raises(Killed):
        simulate(cfg)
    monkeypatch.undo()


def resume(run_dir: Path):  # noqa: ANN201
    return simulate(load_config(run_dir / "config.toml"), resume=run_dir)


CASES = {
    # FedAdam's moments (strategy state) + top-k with error feedback both ways (terminals'
    # residuals in Context.state, the server's downlink reference and replica rounds).
    "fedadam-topk-ef": {
        "strategy.name": "fedadam",
        "strategy.params": "{eta = 0.05}",
        "compression": "{uplink = 'topk', density = 0.1, error_feedback = true, downlink = 'topk', downlink_options = {density = 0.5}, downlink_error_feedback = true}",
    },
    # FedAvgM's server momentum, with crashes injected, a client sample (Python's RNG) and local
    # DP-SGD (each terminal's accountant in Context.state).
    "fedavgm-faults-dp": {
        "strategy.name": "fedavgm", "strategy.fraction_train": 0.5, "faults": "{crash_rate = 0.3, seed = 1}",
        "privacy": "{mode = 'local', noise_multiplier = 1.0}",
    },
    # Split learning: server part and optimiser on the server, terminal parts in Context.state.
    "splitfed-v1": {"training.mode": "splitfed-v1", "split.cut": "net.2"},
    "plain": {},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):  # noqa: ANN001, ANN201
    """``reference(case)``: the folder of an uninterrupted run of ``CASES[case]`` (run once per module)."""
    runs: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in runs:
            root = tmp_path_factory.mktemp(f"reference-{case}")
            runs[case] = simulate(load_config(None, overrides(root, "reference", **CASES[case]))).run_dir
        return runs[case]

    return get


@pytest.mark.parametrize("case", ["fedadam-topk-ef", "fedavgm-faults-dp", "splitfed-v1"])
def test_a_run_stopped_after_a_checkpoint_resumes_bitwise(tmp_path, monkeypatch, reference, case):
    extra = CASES[case]
    cut = load_config(None, overrides(tmp_path, "cut", **extra))
    run_until_killed(cut, monkeypatch, after_checkpoint=1)
    run_dir = tmp_path / "cut"
    assert read_resume_point(run_dir / "checkpoints" / RESUME_FILE).round == 1
    resumed = resume(run_dir)
    assert resumed.run_dir == run_dir
    assert_same_run(reference(case), run_dir)
    if case == "fedadam-topk-ef":  # the state that had to come back was there to come back
        point = read_resume_point(run_dir / "checkpoints" / RESUME_FILE)
        assert point.round == ROUNDS
        assert all("fedsplit.ef-residual" in state for state in point.contexts.values())
    if case == "fedavgm-faults-dp":
        point = read_resume_point(run_dir / "checkpoints" / RESUME_FILE)
        assert any("fedsplit.dp-accountant" in state for state in point.contexts.values())


@pytest.mark.slow
def test_on_the_ray_engine_with_killed_actors_a_resumed_run_is_bitwise_the_same(tmp_path, monkeypatch, ray_session):
    """fedsplit's default engine: Context.state travels to the actors and back, actors die and are
    replaced (kill faults), and the run resumed in a fresh engine ends as the same run does,
    uninterrupted, on the serial engine (which answers a kill with the dead actor's error reply,
    without a process to replace: every replacement costs a process importing torch and Flower,
    ~10 s here)."""
    faults = {**CASES["fedadam-topk-ef"], "faults": "{crash_rate = 0.2, kill_rate = 0.1, seed = 3}"}
    reference = simulate(load_config(None, overrides(tmp_path, "reference", **faults)))
    assert any(r["reason"].startswith("actor process died") for r in table(reference.run_dir / "clients.csv"))
    extra = {**faults, "engine.name": "fedsplit"}
    run_until_killed(load_config(None, overrides(tmp_path, "cut", **extra)), monkeypatch, after_checkpoint=1)
    resume(tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["actor_restarts"] > 0  # the kill was in rounds 2-3
    assert_same_run(reference.run_dir, tmp_path / "cut", engine_keys=ENGINE_KEYS)


@pytest.mark.slow
def test_a_run_whose_ray_cluster_is_gone_goes_on_elsewhere_as_the_same_run(tmp_path, monkeypatch, fedsplit_main, reference, ray_session):
    """The Ray cluster a run was attached to is gone (nothing answers at its address): --resume
    refuses in one line that gives the way out, and ``--set engine.ray_address=`` (a local Ray)
    goes on to the same run as an uninterrupted one."""
    run_until_killed(load_config(None, overrides(tmp_path, "cut", **{"engine.name": "fedsplit"})), monkeypatch, after_checkpoint=1)
    run_dir = tmp_path / "cut"
    gone = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = run_dir / "config.toml"
    config.write_text(config.read_text().replace('ray_address = ""', f'ray_address = "{gone}"'))  # where it ran
    # a new process, as a user's command is (this one's Ray is up: the check is for starting one)
    refused = run_child(fedsplit_cmd("simulate", "--resume", str(run_dir)), 300, cwd=REPO)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"fedsplit simulate: error: engine.ray_address = '{gone}': no Ray cluster answers there (Connection refused); "
        "start one with `ray start --head --port=6379` on that machine, or leave engine.ray_address empty for a local Ray; "
        f"or go on elsewhere: fedsplit simulate --resume {run_dir} --set engine.ray_address=HOST:PORT (empty: a local Ray)"
    )
    assert read_resume_point(run_dir / "checkpoints" / RESUME_FILE).round == 1  # nothing lost
    moved = fedsplit_main("simulate", "--resume", str(run_dir), "--set", "engine.ray_address=")
    assert moved.returncode == 0, moved.stderr
    assert_same_run(reference("plain"), run_dir, engine_keys=ENGINE_KEYS)
    assert 'ray_address = ""' in config.read_text()  # the folder's config says where the run ended


def test_a_run_killed_mid_round_resumes_from_the_last_checkpoint(tmp_path, monkeypatch, reference):
    extra = CASES["fedadam-topk-ef"]
    run_until_killed(load_config(None, overrides(tmp_path, "cut", **extra)), monkeypatch, in_round=2)
    run_dir = tmp_path / "cut"
    assert read_resume_point(run_dir / "checkpoints" / RESUME_FILE).round == 1  # round 2 was under way
    resume(run_dir)
    assert_same_run(reference("fedadam-topk-ef"), run_dir)


def test_without_the_terminals_state_a_resumed_run_would_differ(tmp_path, monkeypatch, reference):
    """The control: drop the saved Context.state (error-feedback residuals) and the result moves."""
    extra = CASES["fedadam-topk-ef"]
    run_until_killed(load_config(None, overrides(tmp_path, "cut", **extra)), monkeypatch, after_checkpoint=1)
    run_dir = tmp_path / "cut"
    monkeypatch.setattr(server_app, "restore_context_states", lambda grid, states: True)
    resume(run_dir)
    with pytest.raises(AssertionError, match="final weights differ"):
        assert_same_run(reference("fedadam-topk-ef"), run_dir)


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch, reference):
    cfg = load_config(None, overrides(tmp_path, "cut"))
    run_until_killed(cfg, monkeypatch, in_round=1)
    run_dir = tmp_path / "cut"
    assert not (run_dir / "checkpoints" / RESUME_FILE).exists() and (run_dir / "config.toml").is_file()
    resume(run_dir)
    assert_same_run(reference("plain"), run_dir)


def test_a_protocol_whose_state_cannot_be_saved_runs_on_without_resume_points(tmp_path, caplog):
    cfg = load_config(None, overrides(tmp_path, "locked"))
    session = server_app.RunSession.from_config(cfg, checkpoint_dir=tmp_path / "checkpoints")

    class Locked:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    session.save_resume_point(1, Locked(), grid=None)
    session.save_resume_point(2, Locked(), grid=None)
    assert "cannot pickle" in session.not_resumable
    assert not (tmp_path / "checkpoints" / RESUME_FILE).exists()
    assert sum("no resume points for this run" in r.getMessage() for r in caplog.records) == 1


def test_resume_refuses_changes_and_folders_that_are_not_runs(tmp_path, fedsplit_main):
    for what in (["--set", "rounds=5"], ["--set", "engine.num_cpus=1", "--set", "seed=2"], ["--engine", "serial"]):
        changed = fedsplit_main("simulate", "--resume", str(tmp_path), *what)
        assert changed.returncode == 2
        assert "--config, --engine and --set cannot change it (--set may only say where it goes on: engine.ray_address, engine.num_cpus)" in changed.stderr
    missing = fedsplit_main("simulate", "--resume", str(tmp_path))
    assert missing.returncode == 2 and "no config.toml there" in missing.stderr
    (tmp_path / "config.toml").write_text("rounds = 1\n")
    (tmp_path / "summary.json").write_text('{"final_accuracy": 0.9}')
    finished = fedsplit_main("simulate", "--resume", str(tmp_path))
    assert finished.returncode == 2 and "that run already finished" in finished.stderr
    assert (tmp_path / "summary.json").read_text() == '{"final_accuracy": 0.9}'  # left as it was
    with pytest.raises(ResumePointError, match="that run already finished"):  # the library refuses it too
        simulate(load_config(tmp_path / "config.toml"), resume=tmp_path)
    assert (tmp_path / "summary.json").read_text() == '{"final_accuracy": 0.9}'


def torch_bytes(obj: object) -> bytes:
    """What ``torch.save(obj)`` writes."""
    fh = io.BytesIO()
    torch.save(obj, fh)
    return fh.getvalue()


def test_an_unreadable_resume_point_is_refused_in_one_line_and_its_advice_works(tmp_path, monkeypatch, fedsplit_main, reference):
    """A truncated or corrupt resume.pt: one line naming it and what to do (was a torch traceback),
    the file and the folder left as they were; doing what it says redoes the run from round 1."""
    run_until_killed(load_config(None, overrides(tmp_path, "cut", progress="true")), monkeypatch, after_checkpoint=1)
    run_dir = tmp_path / "cut"
    path = run_dir / "checkpoints" / RESUME_FILE
    good = path.read_bytes()
    unreadable = "unreadable resume point, truncated or corrupt ("
    for content, says in [
        (good[:100], unreadable + "RuntimeError: PytorchStreamReader failed reading zip archive"),  # head -c 100
        (good[: len(good) // 2], unreadable),
        (b"", unreadable + "EOFError: Ran out of input"),
        (b"not a torch file " * 10, unreadable),
        (torch_bytes({"version": 99, "round": 1}), "resume point format 99, this fedsplit reads 1"),
        (torch_bytes({"version": 1, "round": 1}), "not a complete resume point (missing ["),
        (torch_bytes([1, 2]), "not a resume point (it holds a list)"),
    ]:
        path.write_bytes(content)
        run = fedsplit_main("simulate", "--resume", str(run_dir))
        assert run.returncode == 2 and run.stdout == "", run.stderr
        assert run.stderr.startswith(f"fedsplit simulate: error: {path}: {says}") and run.stderr.count("\n") == 1, run.stderr
        assert f"move that file aside and run `fedsplit simulate --resume {run_dir}` again" in run.stderr
        assert path.read_bytes() == content and not (run_dir / "summary.json").exists()
    path.rename(run_dir / "corrupt-resume.pt")  # what the message says to do
    redone = fedsplit_main("simulate", "--resume", str(run_dir))
    assert redone.returncode == 0, redone.stderr
    assert redone.stderr.startswith(f"resuming {run_dir} from round 1 of {ROUNDS}: no checkpoints/{RESUME_FILE} there\n")
    assert_same_run(reference("plain"), run_dir)


def test_resume_says_after_which_round_it_continues(tmp_path, monkeypatch, fedsplit_main):
    run_until_killed(load_config(None, overrides(tmp_path, "cut", progress="true")), monkeypatch, after_checkpoint=2)
    run = fedsplit_main("simulate", "--resume", str(tmp_path / "cut"))
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines()[0] == f"resuming {tmp_path / 'cut'} after round 2 of {ROUNDS}"
    assert f"round {ROUNDS}/{ROUNDS}: " in run.stderr and "round 2/" not in run.stderr  # only round 3 was run


def test_a_resume_point_is_replaced_atomically(tmp_path, monkeypatch):
    """A write that dies half-way (here an exception; the slow test below: SIGKILL) leaves the
    previous resume point whole: the new one goes to resume.pt.tmp, renamed over it once complete."""
    from fedsplit.simulation import checkpoint

    path = tmp_path / "checkpoints" / RESUME_FILE
    point = checkpoint.ResumePoint(round=1, protocol=b"state", ledger=None, contexts=None, rng={}, sim_elapsed_s=1.5)
    checkpoint.write_resume_point(path, point)

    whole = torch_bytes(vars(point))

    def half_written(obj, fh):  # noqa: ANN001, ANN202
        fh.write(whole[:50])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.write_resume_point(path, checkpoint.ResumePoint(**{**vars(point), "round": 2}))
    monkeypatch.undo()
    assert read_resume_point(path).round == 1


# --- the real thing: SIGKILL of a `fedsplit simulate` process, at two moments ----------------------
def resume_round(run_dir: Path) -> int:
    """The round of the run's resume point (0 when it has none yet)."""
    point = read_resume_point(run_dir / "checkpoints" / RESUME_FILE)
    return 0 if point is None else point.round


def killed_run(cmd: list[str], at: str) -> None:
    """Run ``cmd`` until it SIGKILLs itself at ``at`` (:data:`KILL_ENV`), checking that it did."""
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, KILL_ENV: at})
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed at {at}: {proc.returncode} {proc.stderr[-2000:]}"


@pytest.mark.slow
def test_sigkill_at_two_moments_then_resume_equals_the_uninterrupted_run(tmp_path):
    """The process dies by SIGKILL (nothing runs after it) at two exact moments: right after round
    1's resume point is in place, and after round 3's new point is written but before it replaces
    round 2's (round 3's ledger rows already on disk); each resume continues from what is there."""
    rounds = 4
    sets = small_overrides(tmp_path, **{"engine.name": "serial", "rounds": rounds, "strategy.name": "fedadam", "train.batch_size": 128,
                                        "compression": "{uplink = 'topk', density = 0.1, error_feedback = true}"})
    args = [a for kv in sets for a in ("--set", kv)]
    reference = simulate(load_config(None, [*sets, "run_name=reference"]))  # in this process: the serial engine needs no other
    run_dir = tmp_path / "cut"
    killed_run(fedsplit_cmd("simulate", *args, "--set", "run_name=cut"), at="after-rename:1")
    assert resume_round(run_dir) == 1
    killed_run(fedsplit_cmd("simulate", "--resume", str(run_dir)), at="before-rename:3")
    assert resume_round(run_dir) == 2
    assert (run_dir / "checkpoints" / (RESUME_FILE + ".tmp")).is_file()  # round 3's point, never renamed
    last = run_child(fedsplit_cmd("simulate", "--resume", str(run_dir)), 300, cwd=REPO)
    assert last.returncode == 0, last.stderr
    assert_same_run(reference.run_dir, run_dir)
