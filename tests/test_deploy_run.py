"""``fedsplit deploy run`` when the SuperLink goes away under it: a real SuperLink process on loopback.

No SuperNode is needed: the run waits for its terminals (``deploy.wait_s``) while the SuperLink
is killed, which is what a crashed or restarted server looks like to the command following it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsplit.simulation.deploy import deploy_env, superlink_command, write_flower_config
from tests.conftest import free_port
from tests.test_deploy import APP_DIR, _port_open

FEDERATION = "lost"


@pytest.mark.slow
def test_deploy_run_says_so_when_the_superlink_dies_under_it(tmp_path: Path) -> None:
    port = free_port()
    env = deploy_env(flwr_home=tmp_path / "flwr-home")
    write_flower_config(tmp_path / "flwr-home", f"127.0.0.1:{port}", name=FEDERATION)
    with open(tmp_path / "superlink.log", "wb") as log:
        superlink = subprocess.Popen(superlink_command("127.0.0.1", port), env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
    run = None
    try:
        deadline = time.monotonic() + 60
        while not _port_open(port):
            assert time.monotonic() < deadline and superlink.poll() is None, (tmp_path / "superlink.log").read_text()[-2000:]
            time.sleep(0.2)
        cmd = [str(Path(sys.executable).parent / "fedsplit"), "deploy", "run", str(APP_DIR), "--federation", FEDERATION,
               "--set", "devices={laptop=2}", "--set", "deploy.wait_s=120", "--set", f"out_dir={tmp_path / 'runs'}"]
        stderr = tmp_path / "deploy-run.log"
        with open(stderr, "w") as fh:
            run = subprocess.Popen(cmd, env=env, cwd=APP_DIR, stdout=subprocess.DEVNULL, stderr=fh)
        deadline = time.monotonic() + 60
        while "streaming its log" not in stderr.read_text():  # the run started; the command follows it
            assert time.monotonic() < deadline and run.poll() is None, stderr.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(2)
        superlink.send_signal(signal.SIGKILL)
        run.wait(timeout=120)
        err = stderr.read_text()
    finally:
        for proc in (run, superlink):
            if proc is not None and proc.poll() is None:
                proc.kill()
        subprocess.run(["pkill", "-f", f"127.0.0.1:{port}"], check=False)  # the ServerApp process Flower started
    assert run.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("fedsplit deploy run: error: lost the SuperLink while following run ") and "how it ended is unknown" in last
    assert f"`flwr ls {FEDERATION} --run-id " in last
