"""Shared fixtures: a small configuration and a Ray session that tests reuse."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# Hypothesis profiles (the property-based tests are in tests/test_compression_fuzz.py):
#   ci (default)  derandomized, so a given commit is green or red on every run: the examples
#                 are a fixed function of each test; CI_EXAMPLES per test, no deadline (timing
#                 must not decide a result), no example database.
#   fuzz          a randomized campaign of FEDSPLIT_FUZZ_EXAMPLES examples per test (default
#                 FUZZ_DEFAULT_EXAMPLES), with a per-example deadline to catch hangs; chosen
#                 when FEDSPLIT_FUZZ_EXAMPLES is set, e.g.
#                 FEDSPLIT_FUZZ_EXAMPLES=20000 python -m pytest tests/test_compression_fuzz.py
# HYPOTHESIS_PROFILE=<name> selects a profile explicitly and wins over both. What a campaign
# finds becomes a fixed example (a plain test), never a stored database entry.
CI_EXAMPLES = 60  # per property test: the fuzz file runs in a few seconds
FUZZ_DEFAULT_EXAMPLES = 1000  # per property test when the fuzz profile is chosen by name
FUZZ_DEADLINE_MS = 2000  # per example, fuzz profile only


def _register_hypothesis_profiles() -> str | None:
    """Register the ``ci`` and ``fuzz`` profiles and load the selected one; its name."""
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # hypothesis is a test extra; tests that need it import it themselves
        return None
    common = {"database": None, "print_blob": True, "suppress_health_check": [HealthCheck.too_slow]}
    settings.register_profile("ci", derandomize=True, max_examples=CI_EXAMPLES, deadline=None, **common)
    examples = int(os.environ.get("FEDSPLIT_FUZZ_EXAMPLES") or FUZZ_DEFAULT_EXAMPLES)
    settings.register_profile("fuzz", derandomize=False, max_examples=examples, deadline=FUZZ_DEADLINE_MS, **common)
    default = "fuzz" if os.environ.get("FEDSPLIT_FUZZ_EXAMPLES") else "ci"
    profile = os.environ.get("HYPOTHESIS_PROFILE") or default
    settings.load_profile(profile)
    return profile


HYPOTHESIS_PROFILE = _register_hypothesis_profiles()

REPO = Path(__file__).resolve().parents[1]

# Bytecode is cached: with PYTHONDONTWRITEBYTECODE set (some CI images and containers set it),
# every process the suite starts (pytest-xdist workers, Ray actors, `fedsplit` subprocesses) would
# compile torch, Flower and Ray from source again: ~10 s of each actor's and subprocess's start on
# 2 cores (a 1-round serial `fedsplit simulate` 18.7 s -> 7.4 s once cached). Those processes
# inherit this environment; this process's own later imports are cached too.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    sys.dont_write_bytecode = False

# Quiet, deterministic, CPU-only test runs.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

# One torch thread in the test processes: the suite runs as two pytest-xdist workers on CI's two
# cores, and the tests' models are tiny, where a second intra-op thread per worker only adds
# contention (measured by the split and orchestration tests on a loaded 2-core box: a 2-round run
# 21 s -> 1.1 s). Subprocesses and Ray actors set their own threads as fedsplit does for users.
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def task_identity():
    """Flower needs a run/node identity to build instruction messages; restore it afterwards."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="session")
def _warm_actors():
    """fedsplit's actors outlive a test's run and host the next test's (each new actor costs a
    process importing torch and Flower: ~25 s of a 2-round run on 2 loaded cores)."""
    from fedsplit.simulation.warm_actors import warm_actors

    with warm_actors():
        yield


@pytest.fixture
def ray_session(_warm_actors):
    """A local Ray with 2 CPUs (started if none is running; left running for later tests), whose
    runs keep their actors warm for the next test (:mod:`fedsplit.simulation.warm_actors`)."""
    import ray

    from fedsplit.simulation.engine import ray_init_options

    if not ray.is_initialized():  # as a run's engine starts it (inline cut included), without the actors' logs
        ray.init(**{**ray_init_options(num_cpus=2), "log_to_driver": False})
    yield ray


@pytest.fixture(autouse=True)
def _no_idle_actors_under_flower(request: pytest.FixtureRequest) -> None:
    """Before a test on Flower's engine, give the warm actors' CPUs back: Flower's own actors
    would otherwise wait for resources that fedsplit's idle actors hold (a hang, not a failure)."""
    if _on_flower_engine(request.node):
        from fedsplit.simulation.warm_actors import release_idle

        release_idle()


def small_overrides(tmp_path: Path, **extra: object) -> list[str]:
    """``--set`` overrides of a seconds-long run on digits."""
    base = {
        "rounds": 2,
        "out_dir": str(tmp_path),
        "run_name": "run",
        "devices": "{raspberry-pi-4 = 2, laptop = 2}",
        "model.name": "mlp",
        "train.local_epochs": 1,
        "progress": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def fresh_interpreter_json(code: str, timeout_s: float = 300.0) -> object:
    """Run ``code`` in a new Python interpreter (this one's, from the repository root) and return
    the JSON value its last line of output prints: what a process that imported nothing before
    sees (imported modules, values read back). Fails the test, with the stderr, if it fails."""
    import json

    proc = run_child([sys.executable, "-c", code], timeout_s, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(cmd: list[str], timeout_s: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)``, except
    that a child still running after ``timeout_s`` seconds fails the test with its Python stacks.

    The child runs with ``PYTHONFAULTHANDLER=1``; at the timeout it gets SIGABRT, on which
    :mod:`faulthandler` writes every thread's stack to its stderr, and the test fails with that
    stderr: a hang in CI names its place (a stack at the interpreter's exit, or none for a hang
    in C++ after it) instead of only the command line that timed out.
    """
    import signal

    env = {**dict(kwargs.pop("env", None) or os.environ), "PYTHONFAULTHANDLER": "1"}  # type: ignore[call-overload]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs) as child:  # type: ignore[call-overload]
        try:
            out, err = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            try:
                out, err = child.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # not even the stacks: a process stuck outside Python
                child.kill()
                out, err = child.communicate()
            pytest.fail(f"{' '.join(map(str, cmd))!r} ran over {timeout_s:g} s; its stdout ends:\n{out[-2000:]}\n"
                        f"its stderr (with the stacks at the timeout) ends:\n{err[-8000:]}")
    return subprocess.CompletedProcess(cmd, child.returncode, out, err)


def free_port() -> int:
    """A TCP port on loopback where nothing listens (bound, then closed again)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fedsplit_cmd(*args: str) -> list[str]:
    """The ``fedsplit`` console command, run with this interpreter."""
    return [sys.executable, "-m", "fedsplit.cli", *args]


@dataclass(frozen=True)
class CliRun:
    """What one ``fedsplit`` command did, as :class:`subprocess.CompletedProcess` reports it."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def fedsplit_main(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """Run ``fedsplit ARGS...`` in this process and capture its exit status and output.

    The same ``main`` as the console script, without a new interpreter importing torch, Flower
    and Ray for every call (seconds each on 2 cores); a run uses the test's Ray session when one
    is up (request ``ray_session``). tests/test_readme.py runs the installed script itself.
    """
    from fedsplit.cli import main

    def run(*args: str) -> CliRun:
        capsys.readouterr()  # what the test printed before is not this command's output
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out, err = capsys.readouterr()
        return CliRun(int(code or 0), out, err)

    return run


def _on_flower_engine(item: pytest.Item) -> bool:
    """Whether a test runs Flower's simulation engine (its actors need the CPUs)."""
    return any(mark in item.nodeid for mark in ("[flower", "both_engines", "across_engines", "flower_engine"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:  # noqa: ARG001
    """Order the tests so that Ray and its actors are started as rarely as possible.

    - Files with tests on Flower's engine go last, their Flower tests last within them: before
      such a test the warm fedsplit actors are released (Flower's need their CPUs), so the next
      fedsplit run on that worker starts new actor processes (~10 s each here).
    - Tests marked ``ends_ray`` go at the very end: each shuts the session's Ray down (a fresh
      start costs 8-10 s here). Flower's engine leaves a running Ray up
      (:func:`fedsplit.simulation.runner.flower_keeps_callers_ray`).

    The sort is stable, and ``--dist loadfile`` keeps each file on one worker.
    """
    flower_files = {item.path for item in items if _on_flower_engine(item)}
    items.sort(key=lambda item: (item.get_closest_marker("ends_ray") is not None, item.path in flower_files, _on_flower_engine(item)))


@pytest.fixture(scope="session")
def small_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model-family members for the catalog and serve-sim tests (trained centrally for one epoch,
    :mod:`tests.family_helpers`): ``small`` 5 px x 0.25, ``large`` 8 px x 0.5, ``int8`` of ``large``."""
    from fedsplit.report.members import derive_int8
    from tests.family_helpers import make_member

    out = tmp_path_factory.mktemp("family")
    small = make_member(out, "cnn-5px-w0.25", 5, 0.25, epochs=1)
    large = make_member(out, "cnn-8px-w0.5", 8, 0.5, epochs=1)
    return {"small": small, "large": large, "int8": derive_int8(large, out, calibration_samples=128)}
