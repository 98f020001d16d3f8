"""The ``fedsplit`` command ends its process once its work is done (fedsplit.process_exit).

CI once saw ``fedsplit simulate`` on an attached Ray cluster print its result and never exit: the
interpreter's teardown ran a destructor that blocked. These tests build such a destructor on
purpose and check that the command's exit skips it while keeping what a normal exit keeps.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, fedsplit_cmd, run_child

#: A module-level object whose destructor blocks for ever: what the interpreter's teardown meets.
STUCK_AT_TEARDOWN = textwrap.dedent(
    """
    import atexit, sys, threading
    from concurrent.futures import ThreadPoolExecutor

    class StuckAtTeardown:
        def __del__(self):
            threading.Event().wait()

    stuck = StuckAtTeardown()
    pool = ThreadPoolExecutor(1)
    pool.submit(int).result()  # an idle worker thread: threading's exit hook must stop it
    atexit.register(lambda: print("atexit ran", file=sys.stderr))
    print("result line")  # to a pipe: buffered until the exit flushes it
    """
)


def run_python(code: str, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


def test_a_plain_exit_hangs_on_a_destructor_that_blocks():
    """The hazard is real: Python's own exit prints the output, then never ends."""
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run_python(STUCK_AT_TEARDOWN + "sys.exit(3)\n", timeout_s=5)
    assert b"result line" in (info.value.stdout or b"")


@pytest.mark.parametrize(("code", "status"), [("3", 3), ("None", 0), ("'why it stopped'", 1)])
def test_exit_now_skips_the_teardown_and_keeps_output_atexit_and_code(code, status):
    proc = run_python(STUCK_AT_TEARDOWN + f"from fedsplit.process_exit import exit_now\nexit_now({code})\n", timeout_s=60)
    assert proc.returncode == status
    assert proc.stdout == "result line\n"
    assert "atexit ran" in proc.stderr
    if status == 1:
        assert proc.stderr.startswith("why it stopped\n")  # as sys.exit prints a non-int code


def test_exit_now_waits_for_a_non_daemon_thread_first():
    code = textwrap.dedent(
        """
        import threading, time
        from fedsplit.process_exit import exit_now

        def late_line():
            time.sleep(1.0)
            print("written by the thread")

        threading.Thread(target=late_line).start()
        exit_now(0)
        """
    )
    proc = run_python(code, timeout_s=60)
    assert (proc.returncode, proc.stdout) == (0, "written by the thread\n")


@pytest.mark.parametrize(
    ("args", "status", "stream", "text"),
    [
        (["--help"], 0, "stdout", "usage: fedsplit"),
        (["no-such-command"], 2, "stderr", "invalid choice: 'no-such-command'"),
    ],
)
def test_the_console_command_keeps_argparse_exit_codes(args, status, stream, text):
    proc = subprocess.run(fedsplit_cmd(*args), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == status
    assert text in getattr(proc, stream)


def test_a_bug_in_a_command_prints_its_traceback_and_exits_1(monkeypatch, capsys):
    from fedsplit import cli

    def broken_main():
        raise RuntimeError("a bug in a handler")

    ended = []
    monkeypatch.setattr(cli, "main", broken_main)
    monkeypatch.setattr(cli, "exit_now", ended.append)
    cli.console_main()
    assert ended == [1]
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "RuntimeError: a bug in a handler" in err


def test_the_installed_fedsplit_script_is_the_console_main():
    """pyproject's entry point (what ``pip install`` writes as ``fedsplit``) is the exit-safe one."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"fedsplit": "fedsplit.cli:console_main"}


def test_a_child_that_hangs_fails_the_test_with_its_python_stacks():
    """tests' run_child: CI's log of a hang shows where the child was, not only its command line."""
    code = "import time\ndef waiting_for_ever():\n    time.sleep(600)\nprint('started', flush=True)\nwaiting_for_ever()\n"
    with pytest.raises(pytest.fail.Exception) as info:
        run_child([sys.executable, "-c", code], 5)
    message = str(info.value)
    assert "ran over 5 s" in message and "started" in message
    assert "Fatal Python error: Aborted" in message and "in waiting_for_ever" in message
    done = run_child([sys.executable, "-c", "print('fine')"], 60)
    assert (done.returncode, done.stdout) == (0, "fine\n")
