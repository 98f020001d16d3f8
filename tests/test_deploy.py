"""fedsplit on Flower's deployment engine, with real processes on loopback.

One SuperLink (TLS, SuperNode authentication) and three SuperNodes (one per terminal, each with
its node key) are started once for the module as separate processes; ``flwr run`` then starts
fedsplit's ServerApp on them. Every process runs in its own session and its whole process group
is killed by the fixture's finalizer, also when a test fails.

Run alone: ``.venv/bin/python -m pytest -q tests/test_deploy.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from fedsplit.simulation.certs import LabCertificates, make_lab_certificates
from fedsplit.simulation.deploy import (
    DeployError,
    check_transport,
    deploy_env,
    register_command,
    run_command,
    superlink_command,
    supernode_command,
    write_flower_config,
)

APP_DIR = Path(__file__).resolve().parents[1]
NODES = 3
FEDERATION = "loopback"
#: The run both engines train: two rounds of FedAvg with top-k uplink compression.
OVERRIDES = [
    "rounds=2",
    f"devices={{laptop={NODES}}}",
    "model.name=mlp",
    "train.local_epochs=1",
    "compression.uplink=topk",
    "compression.density=0.1",
    "progress=false",
]


# --- fast checks: no processes ---------------------------------------------------------------
def test_plaintext_superlink_off_loopback_is_refused_with_the_fix() -> None:
    with pytest.raises(DeployError, match=r"without TLS.*fedsplit deploy certs.*--certs.*--allow-insecure"):
        superlink_command("0.0.0.0", 9093)
    with pytest.raises(DeployError, match="without TLS"):
        supernode_command("192.0.2.7:9093", 0, 3)
    check_transport("127.0.0.1", tls=False)  # loopback: allowed
    check_transport("0.0.0.0", tls=False, allow_insecure=True)  # the user insists
    assert "--insecure" in superlink_command("0.0.0.0", 9093, allow_insecure=True)


def test_deploy_cli_refuses_plaintext_superlink(fedsplit_main) -> None:  # noqa: ANN001 - conftest fixture
    run = fedsplit_main("deploy", "superlink", "--host", "0.0.0.0", "--dry-run")
    assert run.returncode == 2
    assert "without TLS" in run.stderr and "fedsplit deploy certs" in run.stderr


def test_lab_certificates_chain_and_keys(tmp_path: Path) -> None:
    certs = make_lab_certificates(tmp_path / "certs", hosts=["lab-server", "192.168.1.10"], nodes=["pi-0"])
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"lab-server", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert {"192.168.1.10", "127.0.0.1"} <= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    for private in (certs.ca_key, certs.server_key, certs.node_key("pi-0")):
        assert private.stat().st_mode & 0o077 == 0, private
    assert certs.node_public_key("pi-0").read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(FileExistsError, match="--force"):
        make_lab_certificates(tmp_path / "certs")


# --- the loopback lab ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Terminate ``proc``'s whole process group (it was started with ``start_new_session``)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=grace_s)


@dataclass
class Lab:
    """A running loopback lab: certificates, addresses and processes."""

    root: Path
    certs: LabCertificates
    address: str
    env: dict[str, str]
    superlink: subprocess.Popen | None = None
    nodes: list[subprocess.Popen] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def start(self, cmd: list[str], log_name: str) -> subprocess.Popen:
        """Start ``cmd`` in its own session, output to ``root/<log_name>.log``; killed at teardown."""
        log = open(self.root / f"{log_name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def supernode(self, partition_id: int, key_name: str, **kwargs: object) -> subprocess.Popen:
        cmd = supernode_command(
            self.address, partition_id, NODES, profile="laptop", root_certificates=self.certs.ca_cert,
            private_key=self.certs.node_key(key_name), runtime_port=(port := _free_port()), **kwargs,
        )
        self.ports.append(port)
        return self.start(cmd, f"supernode-{key_name}")


def _wait_for(predicate, timeout_s: float, what: str, lab: Lab) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if lab.superlink is not None and lab.superlink.poll() is not None:
            raise RuntimeError(f"SuperLink exited ({lab.superlink.returncode}):\n{lab.log('superlink')[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{what} not within {timeout_s:.0f} s:\n{lab.log('superlink')[-3000:]}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """SuperLink with TLS and node authentication, three registered SuperNodes, all running."""
    root = tmp_path_factory.mktemp("lab")
    certs = make_lab_certificates(root / "certs", nodes=[f"node-{i}" for i in range(NODES)] + ["intruder"])
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = deploy_env(flwr_home=root / "flwr-home")
    write_flower_config(root / "flwr-home", address, name=FEDERATION, root_certificates=certs.ca_cert)
    lab = Lab(root=root, certs=certs, address=address, env=env, ports=[port])
    try:
        lab.superlink = lab.start(superlink_command("127.0.0.1", port, certs=root / "certs"), "superlink")
        _wait_for(lambda: _port_open(port), 60, "SuperLink listening", lab)
        for i in range(NODES):
            done = subprocess.run(register_command(certs.node_public_key(f"node-{i}"), FEDERATION), env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
        lab.nodes = [lab.supernode(i, f"node-{i}") for i in range(NODES)]
        _wait_for(lambda: all("SuperNode ID" in lab.log(f"supernode-node-{i}") for i in range(NODES)), 60, "SuperNodes registered", lab)
        yield lab
    finally:
        for proc in reversed(lab.procs):
            _kill_group(proc)
        _kill_strays(lab)


def _kill_strays(lab: Lab) -> None:
    """Kill what Flower started detached for this lab (flower-superexec, flwr-serverapp,
    flwr-clientapp run in sessions of their own), recognised by the lab's ports in their command line."""
    import psutil

    marks = [f"127.0.0.1:{port}" for port in lab.ports]
    strays = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "flwr" in cmdline or "flower" in cmdline:
            if any(f"{mark} " in cmdline + " " for mark in marks):
                strays.append(proc)
    for proc in strays:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(strays, timeout=5)


def _flwr_run(lab: Lab, out_dir: Path, extra: list[str] = ()) -> tuple[subprocess.CompletedProcess, dict]:
    overrides = [*OVERRIDES, f"out_dir={out_dir}", "run_name=deploy", *extra]
    cmd = run_command(APP_DIR, FEDERATION, overrides=overrides)
    done = subprocess.run(cmd, env=lab.env, cwd=APP_DIR, capture_output=True, text=True, timeout=420, start_new_session=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary_path = out_dir / "deploy" / "summary.json"
    assert summary_path.exists(), done.stdout[-4000:] + done.stderr[-4000:]
    return done, json.loads(summary_path.read_text())


@pytest.mark.slow
@pytest.mark.lab_run
def test_fedavg_topk_two_rounds_on_three_supernodes_matches_simulation(lab: Lab, tmp_path: Path, fedsplit_main, ray_session) -> None:  # noqa: ANN001
    done, deployed = _flwr_run(lab, tmp_path / "deployed")
    assert "final_accuracy=" in done.stdout
    assert deployed["engine"] == "flwr-run" and deployed["rounds"] == 2 and deployed["failed"] == 0
    assert deployed["final_metrics"]["fedsplit.uplink-ratio"] > 5  # top-k at density 0.1 went on the wire
    rows = (tmp_path / "deployed" / "deploy" / "clients.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * NODES  # one ledger row per terminal and round
    rounds = (tmp_path / "deployed" / "deploy" / "rounds.csv").read_text().splitlines()
    assert [line.split(",")[3] for line in rounds[1:]] == ["3", "3"]  # aggregated

    # The same configuration on fedsplit's engine: same seed, same partitions, same final model.
    sim = fedsplit_main("simulate", *[a for o in [*OVERRIDES, f"out_dir={tmp_path / 'sim'}", "run_name=sim"] for a in ("--set", o)])
    assert sim.returncode == 0, sim.stderr
    simulated = json.loads((tmp_path / "sim" / "sim" / "summary.json").read_text())
    for key in ("bytes_up", "bytes_down", "flops"):
        assert deployed[key] == simulated[key], key
    assert abs(deployed["final_metrics"]["accuracy"] - simulated["final_metrics"]["accuracy"]) <= 1e-6
    assert abs(deployed["final_metrics"]["loss"] - simulated["final_metrics"]["loss"]) <= 1e-6


@pytest.mark.slow
def test_supernode_with_unknown_key_is_refused(lab: Lab) -> None:
    intruder = lab.supernode(0, "intruder", max_retries=1, max_wait_time=20)
    try:
        intruder.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("a SuperNode with an unregistered key was not refused within 90 s:\n" + lab.log("supernode-intruder")[-3000:])
    assert intruder.returncode != 0
    assert "Failed to activate SuperNode" in lab.log("supernode-intruder")
    assert all(node.poll() is None for node in lab.nodes)  # the registered ones are still connected


@pytest.mark.slow
@pytest.mark.lab_run
def test_run_finishes_when_a_supernode_dies_mid_round(lab: Lab, tmp_path: Path) -> None:
    """Last in the module: it kills one of the lab's SuperNodes for good."""
    victim = lab.nodes[2]
    trains_before = lab.log("supernode-node-2").count("Receiving: train message")
    out_dir = tmp_path / "killed"
    cmd = run_command(APP_DIR, FEDERATION, overrides=[*OVERRIDES, f"out_dir={out_dir}", "run_name=deploy"])
    run = lab.start(cmd, "flwr-run-killed")
    try:
        deadline = time.monotonic() + 240
        while lab.log("supernode-node-2").count("Receiving: train message") == trains_before:
            assert run.poll() is None, lab.log("flwr-run-killed")[-3000:]
            assert time.monotonic() < deadline, "node 2 never received a train message"
            time.sleep(0.2)
        os.killpg(victim.pid, signal.SIGKILL)  # mid-round, while it trains
        victim.wait(timeout=10)
        run.wait(timeout=420)
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not finish after a SuperNode died:\n" + lab.log("flwr-run-killed")[-3000:])
    assert run.returncode == 0, lab.log("flwr-run-killed")[-3000:]
    header, *rows = (out_dir / "deploy" / "rounds.csv").read_text().splitlines()
    cols = header.split(",")
    table = [dict(zip(cols, row.split(","))) for row in rows]
    assert len(table) == 2
    assert [r["aggregated"] for r in table] == ["2", "2"]  # the round completed with the others
    assert [r["failed"] for r in table] == ["1", "1"]
    assert float(table[-1]["accuracy"]) > 0.5
