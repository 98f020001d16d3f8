"""``fedsplit deploy``: run fedsplit's ServerApp and ClientApp on real devices with Flower's deployment engine.

The apps are the ones ``flwr run .`` names in ``pyproject.toml``; this module only builds the
Flower commands around them, with fedsplit's defaults for a lab:

- ``fedsplit deploy certs``: a CA, the SuperLink's TLS certificate and SuperNode keys
  (:mod:`fedsplit.simulation.certs`); run again with ``--node`` alone, it adds node keys beside
  the existing CA, and with a new ``--host`` it re-signs ``server.pem`` with that CA;
- ``fedsplit deploy superlink``: ``flower-superlink`` with TLS and SuperNode authentication; on a
  non-loopback address without certificates it refuses to start unless ``--allow-insecure`` is given;
- ``fedsplit deploy supernode``: ``flower-supernode`` with its terminal (``partition-id``,
  ``num-partitions``) and device profile (``device-profile``, checked by the server against the
  class the run's ``devices`` give that terminal) in its node config, reconnecting with Flower's
  exponential back-off (``--max-retries``/``--max-wait-time`` bound it);
- ``fedsplit deploy register``: admit a SuperNode's public key (``flwr supernode register``);
- ``fedsplit deploy run``: ``flwr run . <federation>`` with the run config's ``overrides``, checked
  here first; it follows the run to its end (``flwr log --stream``) and exits non-zero unless the
  SuperLink reports it completed (Ctrl-C stops the run there, :func:`follow_run`).

Runtime dependencies: flwr 1.41 installs an app's dependencies per run with ``uv`` unless told
not to. fedsplit's devices are provisioned once (``pip install`` of fedsplit and its wheels), so
every command here disables the per-run installation (``--disable-runtime-dependency-installation``
on the SuperLink, ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` for ``flwr run``, and the
SuperNode never gets ``--allow-runtime-dependency-installation``): a device never downloads torch
in the middle of a run, and every device runs the version that was installed on it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedsplit.cli_errors import command_of, print_error
from fedsplit.cli_types import non_negative_int, port_number, positive_int, positive_seconds
from fedsplit.output_paths import output_folder
from fedsplit.simulation.certs import (
    DEFAULT_CERT_DAYS,
    LabCertificates,
    add_node_keys,
    add_server_hosts,
    check_hosts,
    check_node_names,
    hosts_covered,
    make_lab_certificates,
)

#: The federation name ``fedsplit deploy`` writes into the Flower config by default.
DEFAULT_FEDERATION = "fedsplit-lab"
#: The SuperLink's one HTTP port (Fleet, Control and Runtime APIs in flwr 1.41).
DEFAULT_PORT = 9093


class DeployError(ValueError):
    """A deployment setting that cannot work; the message says what to do instead."""


# --- addresses and the plaintext guard ---------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_transport(host: str, *, tls: bool, allow_insecure: bool = False) -> None:
    """Refuse an unencrypted SuperLink on an address other machines can reach.

    Raises
    ------
    DeployError
        When ``tls`` is off, ``host`` is not loopback and ``allow_insecure`` was not given; the
        message tells how to enable TLS.
    """
    if tls or allow_insecure or is_loopback(host):
        return
    raise DeployError(
        f"refusing to start a SuperLink on {host} without TLS: model updates and node identities would "
        "cross the network in clear text. Make certificates with `fedsplit deploy certs --out certs "
        f"--host {'<this machine address>' if host in ('0.0.0.0', '::') else host}` and pass `--certs certs` (SuperNodes then get `--root-certificates certs/ca.pem`); "
        "or, on a network you trust completely, insist with `--allow-insecure`."
    )


# --- Flower executables ------------------------------------------------------------------------
def flower_executable(name: str) -> str:
    """Path of a Flower console script (``flower-superlink``, ``flwr`` ...), next to this Python first."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found: install Flower in this environment (pip install 'flwr[simulation]==1.41.*')")
    return found


def deploy_env(base: Mapping[str, str] | None = None, flwr_home: str | Path | None = None) -> dict[str, str]:
    """Environment for Flower's processes: this Python's scripts first on ``PATH`` (SuperLink and
    SuperNode start ``flower-superexec``/``flwr-clientapp`` by name), runtime installs off."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


# --- command builders --------------------------------------------------------------------------
def superlink_command(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    certs: str | Path | None = None,
    node_auth: bool = True,
    allow_insecure: bool = False,
    database: str | Path | None = None,
    log_file: str | Path | None = None,
) -> list[str]:
    """The ``flower-superlink`` command line for fedsplit.

    Parameters
    ----------
    host, port : str, int
        Where the SuperLink listens (its Fleet, Control and Runtime APIs share this HTTP port).
    certs : str or Path, optional
        A folder written by :func:`~fedsplit.simulation.certs.make_lab_certificates`; without one
        the SuperLink runs without TLS, allowed only on loopback or with ``allow_insecure``.
    node_auth : bool
        Admit only registered SuperNode keys (needs TLS; ignored without ``certs``).
    allow_insecure : bool
        Run without TLS on a non-loopback address (the user insists).
    database : str or Path, optional
        SQLite file for the SuperLink's state (survives a SuperLink restart); in memory otherwise.
    log_file : str or Path, optional
        Where the SuperLink also writes its log (rotated by Flower).
    """
    check_transport(host, tls=certs is not None, allow_insecure=allow_insecure)
    cmd = [flower_executable("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if certs is None:
        cmd.append("--insecure")
    else:
        lab = LabCertificates(Path(certs))
        for path in (lab.ca_cert, lab.server_cert, lab.server_key):
            if not path.exists():
                raise DeployError(f"{path} missing: make the lab's certificates with `fedsplit deploy certs --out {certs}`")
        cmd += ["--ssl-ca-certfile", str(lab.ca_cert), "--ssl-certfile", str(lab.server_cert), "--ssl-keyfile", str(lab.server_key)]
        if node_auth:
            cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    return cmd


def node_config_string(
    partition_id: int, num_partitions: int, profile: str | None = None, extra: Mapping[str, str] | None = None, *, measure: bool = False
) -> str:
    """``--node-config`` of a SuperNode: its terminal, the population size and its device profile
    (``measure``: ``profile="measure"``, the ClientApp probes the device, :mod:`fedsplit.clients.measure_mod`)."""
    if num_partitions < 1:
        raise DeployError(f"--num-partitions {num_partitions}: there must be at least 1 terminal")
    if not 0 <= partition_id < num_partitions:
        raise DeployError(f"--partition-id {partition_id} is outside 0..{num_partitions - 1} (--num-partitions {num_partitions}): "
                          "number the devices 0 to N-1")
    items = {"partition-id": str(partition_id), "num-partitions": str(num_partitions)}
    if profile:
        items["device-profile"] = f'"{profile}"'
    if measure:
        items["profile"] = '"measure"'
    items.update(extra or {})
    return " ".join(f"{k}={v}" for k, v in items.items())


def supernode_command(
    superlink: str,
    partition_id: int,
    num_partitions: int,
    *,
    profile: str | None = None,
    root_certificates: str | Path | None = None,
    private_key: str | Path | None = None,
    runtime_port: int = 9094,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    allow_insecure: bool = False,
    measure: bool = False,
) -> list[str]:
    """The ``flower-supernode`` command line of one device.

    Parameters
    ----------
    superlink : str
        ``HOST:PORT`` of the SuperLink.
    partition_id, num_partitions : int
        The terminal this device is (its data partition) and the population size.
    profile : str, optional
        Device profile name (``raspberry-pi-4``, ``laptop`` ...); sent in the node config.
    root_certificates : str or Path, optional
        The lab's ``ca.pem``; without it the connection is unencrypted (loopback, or ``allow_insecure``).
    private_key : str or Path, optional
        The node's OpenSSH private key, for a SuperLink with SuperNode authentication.
    runtime_port : int
        Port of the SuperNode's local Runtime API (each SuperNode on one machine needs its own).
    max_retries, max_wait_time : int, float, optional
        Bounds of Flower's reconnection with exponential back-off (default: retry forever).
    allow_insecure : bool
        Connect without TLS to a non-loopback SuperLink (the user insists).
    measure : bool
        Measure the device instead of trusting its declared profile: a FLOP/s probe on the
        first message, the link fitted from timed exchanges; the ledger then holds measured
        seconds next to the modelled ones.
    """
    host = superlink.rsplit(":", 1)[0]
    check_transport(host, tls=root_certificates is not None, allow_insecure=allow_insecure)
    cmd = [
        flower_executable("flower-supernode"), "--superlink", superlink, "--port", str(runtime_port),
        "--node-config", node_config_string(partition_id, num_partitions, profile, measure=measure),
    ]
    cmd += ["--insecure"] if root_certificates is None else ["--root-certificates", str(root_certificates)]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


# --- the user's Flower config (federations) ----------------------------------------------------
def write_flower_config(
    flwr_home: str | Path,
    address: str,
    *,
    name: str = DEFAULT_FEDERATION,
    root_certificates: str | Path | None = None,
    default: bool = True,
) -> Path:
    """Add the SuperLink connection ``name`` to ``$FLWR_HOME/config.toml`` (flwr 1.41 reads federations there).

    Other connections already in the file are kept; ``name`` is replaced.
    """
    path, text = flower_config_text(flwr_home, address, name=name, root_certificates=root_certificates, default=default)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def flower_config_text(
    flwr_home: str | Path,
    address: str,
    *,
    name: str = DEFAULT_FEDERATION,
    root_certificates: str | Path | None = None,
    default: bool = True,
) -> tuple[Path, str]:
    """What :func:`write_flower_config` would write: ``($FLWR_HOME/config.toml, its new text)``; writes nothing.

    Raises
    ------
    DeployError
        When the existing file is not valid TOML.
    """
    import tomllib

    import tomli_w

    path = Path(flwr_home) / "config.toml"
    try:
        data = tomllib.loads(path.read_text()) if path.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise DeployError(f"{path}: not valid TOML ({exc}): fix it, or give --flwr-home a fresh folder") from None
    links = data.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(root_certificates).resolve())
    links[name] = entry
    if default or "default" not in links:
        links["default"] = name
    return path, tomli_w.dumps(data)


def register_command(public_key: str | Path, federation: str = DEFAULT_FEDERATION) -> list[str]:
    """``flwr supernode register``: admit a SuperNode's public key to the federation."""
    return [flower_executable("flwr"), "supernode", "register", str(public_key), federation]


def run_command(app_dir: str | Path, federation: str = DEFAULT_FEDERATION, *, overrides: Sequence[str] = (), config_file: str | None = None, stream: bool = True) -> list[str]:
    """``flwr run APP FEDERATION`` with fedsplit's run config (``config-file``, ``overrides``)."""
    entries = []
    if overrides:
        joined = ";".join(overrides)
        if '"' in joined:
            raise DeployError(f"overrides {joined!r}: use single quotes inside values (the run config wraps them in double quotes)")
        entries.append(f'overrides="{joined}"')
    if config_file:
        entries.append(f'config-file="{Path(config_file).resolve()}"')
    cmd = [flower_executable("flwr"), "run", str(app_dir), federation]
    if stream:
        cmd.append("--stream")
    if entries:
        cmd += ["--run-config", " ".join(entries)]
    return cmd


# --- a run, followed to its end ----------------------------------------------------------------
#: Exit status of ``fedsplit deploy run`` when the run ended other than ``finished:completed``.
RUN_FAILED_EXIT = 1
#: Exit status after Ctrl-C (the run was stopped on the SuperLink), as for any interrupted command.
INTERRUPTED_EXIT = 130


def check_run_config(config_file: str | None, overrides: Sequence[str]) -> None:
    """Build the run's configuration here, as the ServerApp will, so a malformed override or
    file is refused before anything reaches the SuperLink.

    A ``config_file`` that does not exist on this machine (it is read on the SuperLink's) is
    skipped; the overrides are then checked against the defaults only when there is no file.

    Raises
    ------
    DeployError
        With the configuration error's one line.
    """
    from fedsplit.config import ConfigError, load_config

    if config_file is not None and not Path(config_file).is_file():
        print(f"fedsplit deploy: {config_file} is not on this machine; the SuperLink's machine checks it", file=sys.stderr)
        return
    try:
        load_config(config_file, overrides)
    except ConfigError as exc:
        raise DeployError(f"{exc} (nothing was started)") from None


def _flwr_json(args: list[str], env: Mapping[str, str]) -> dict:
    """Run a ``flwr`` sub-command with ``--format json`` and return its JSON answer.

    Raises
    ------
    DeployError
        When it fails; with Flower's own error message.
    """
    import json
    import subprocess

    done = subprocess.run([*args, "--format", "json"], env=dict(env), capture_output=True, text=True)
    try:
        payload = json.loads(done.stdout)
    except json.JSONDecodeError:
        payload = {"success": False, "error-message": (done.stderr or done.stdout).strip() or "no output"}
    if done.returncode != 0 or not payload.get("success", False):
        lines = str(payload.get("error-message") or payload).splitlines()
        message = " ".join(line.strip() for line in lines if line.strip() and not line.startswith("Using SuperLink"))
        raise DeployError(f"`flwr {args[1]}` failed: {message}")
    return payload


def run_status(run_id: int, federation: str, env: Mapping[str, str]) -> tuple[str, str]:
    """``(status, details)`` of a run on the SuperLink, e.g. ``("finished:failed", "...")``."""
    payload = _flwr_json([flower_executable("flwr"), "ls", federation, "--run-id", str(run_id)], env)
    runs = payload.get("runs") or [{}]
    return str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))


def follow_run(cmd: list[str], federation: str, env: Mapping[str, str]) -> int:
    """Start the run ``cmd`` (``flwr run`` without ``--stream``), stream its log until it ends
    and return an exit status that says how it ended.

    ``0`` when the run finished ``completed``; :data:`RUN_FAILED_EXIT` with one line naming the
    run's status and Flower's details otherwise (the ServerApp raised, too few SuperNodes ...);
    :data:`INTERRUPTED_EXIT` after Ctrl-C, which also stops the run on the SuperLink (``flwr
    stop``) so it does not go on unattended.
    """
    import subprocess

    flwr = flower_executable("flwr")
    run_id = int(_flwr_json(cmd, env)["run-id"])
    print(f"fedsplit deploy: started run {run_id} on {federation}; streaming its log (Ctrl-C stops the run)", file=sys.stderr, flush=True)
    log = subprocess.Popen([flwr, "log", str(run_id), federation, "--stream"], env=dict(env))
    try:
        log.wait()
    except KeyboardInterrupt:
        log.terminate()
        stop = subprocess.run([flwr, "stop", str(run_id), federation], env=dict(env), capture_output=True, text=True)
        if stop.returncode == 0:
            print(f"fedsplit deploy run: interrupted: run {run_id} stopped on the SuperLink", file=sys.stderr)
        else:
            print(f"fedsplit deploy run: interrupted, but run {run_id} could not be stopped ({(stop.stderr or stop.stdout).strip()[-300:]}); "
                  f"it goes on: `flwr stop {run_id} {federation}`", file=sys.stderr)
        return INTERRUPTED_EXIT
    try:
        status, details = run_status(run_id, federation, env)
    except DeployError as exc:  # the SuperLink went away (killed, restarted, network)
        print_error("deploy run", f"lost the SuperLink while following run {run_id}, how it ended is unknown ({exc}); "
                    f"once it is back: `flwr ls {federation} --run-id {run_id}`")
        return RUN_FAILED_EXIT
    if status == "finished:completed":
        return 0
    reason = f": {details}" if details else ""
    print_error("deploy run", f"run {run_id} ended {status}{reason} (its log is above; `flwr log {run_id} {federation} --show` prints it again)")
    return RUN_FAILED_EXIT


# --- command-line values -----------------------------------------------------------------------
def superlink_address(text: str) -> str:
    """``argparse`` type of ``--superlink``: ``HOST:PORT`` with a port in 1..65535."""
    host, _, port = text.rpartition(":")
    try:
        port_number(port)
    except argparse.ArgumentTypeError:
        host = ""
    if not host.strip("[]"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT of the SuperLink, e.g. 192.168.1.10:{DEFAULT_PORT}")
    return text


def check_profile(profile: str | None, config_file: str | None = None) -> None:
    """Refuse a ``--profile`` that no run could match: neither a built-in device profile nor
    one ``config_file``'s ``[profiles]`` define (the server compares the names).

    Raises
    ------
    DeployError
        Naming the profile, the known ones and how to declare a custom one.
    """
    if profile is None:
        return
    if profile == "measure":
        raise DeployError("--profile measure: to measure this device use --measure-profile "
                          "(--profile then names the class it is declared as, e.g. raspberry-pi-4)")
    known = _known_profiles(config_file)
    if profile not in known:
        where = f"in fedsplit or {config_file}" if config_file else "in fedsplit"
        raise DeployError(f"--profile {profile!r}: no such device profile {where} (known: {', '.join(sorted(known))}); "
                          "for one your run config defines under [profiles.<name>], also pass --config with that file")


def _known_profiles(config_file: str | None) -> set[str]:
    """The built-in device profile names, with ``config_file``'s ``[profiles]`` when given."""
    from fedsplit.config import ConfigError, load_config
    from fedsplit.devices import builtin_profiles, resolve_profiles

    if config_file is None:
        return set(builtin_profiles())
    try:
        return set(resolve_profiles(load_config(config_file).profiles))
    except (ConfigError, ValueError) as exc:
        raise DeployError(f"--config {config_file}: {exc}") from None


# --- sub-command -------------------------------------------------------------------------------
def _show(cmd: list[str], flwr_home: str | None) -> None:
    """Print ``cmd`` on stderr, after ``FLWR_HOME=...`` when it depends on one, so it can be pasted into a shell."""
    prefix = f"FLWR_HOME={shlex.quote(str(flwr_home))} " if flwr_home else ""
    print("fedsplit deploy: " + prefix + shlex.join(cmd), file=sys.stderr, flush=True)


def _exec(cmd: list[str], env: dict[str, str], dry_run: bool, flwr_home: str | None = None) -> int:
    """Print ``cmd`` (:func:`_show`) and become it (signals then reach Flower's process directly)."""
    _show(cmd, flwr_home)
    if dry_run:
        return 0
    os.execve(cmd[0], cmd, env)
    return 1  # not reached


def cmd_deploy(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit deploy``."""
    env = deploy_env(flwr_home=getattr(args, "flwr_home", None))
    try:
        if args.deploy_command == "certs":
            return _certs(args)
        if args.deploy_command == "superlink":
            cmd = superlink_command(args.host, args.port, certs=args.certs, node_auth=not args.no_node_auth,
                                    allow_insecure=args.allow_insecure, database=args.database, log_file=args.log_file)
            if args.flwr_home:
                _federation_config(args)
            return _exec(cmd, env, args.dry_run, args.flwr_home)
        if args.deploy_command == "supernode":
            check_profile(args.profile, args.config)
            cmd = supernode_command(
                args.superlink, args.partition_id, args.num_partitions, profile=args.profile,
                root_certificates=args.root_certificates, private_key=args.private_key, runtime_port=args.runtime_port,
                max_retries=args.max_retries, max_wait_time=args.max_wait_time, allow_insecure=args.allow_insecure,
                measure=args.measure_profile,
            )
            return _exec(cmd, env, args.dry_run)
        if args.deploy_command == "register":
            return _exec(register_command(args.public_key, args.federation), env, args.dry_run, args.flwr_home)
        if args.deploy_command == "run":
            check_run_config(args.config, args.set or [])
            cmd = run_command(args.app, args.federation, overrides=args.set or [], config_file=args.config, stream=False)
            _show(cmd, args.flwr_home)
            return 0 if args.dry_run else follow_run(cmd, args.federation, env)
    except (DeployError, FileExistsError, ValueError) as exc:
        print_error(command_of(args), str(exc))
        return 2
    raise AssertionError(args.deploy_command)


def _certs(args: argparse.Namespace) -> int:
    """``fedsplit deploy certs``: a new lab, or additions to an existing one.

    With a CA in ``--out`` (and no ``--force``) the devices' ``ca.pem`` is never replaced:
    ``--node`` alone (or with hosts ``server.pem`` already covers) adds key pairs, and a new
    ``--host`` re-signs ``server.pem`` with the lab's own ``ca.key`` for the old addresses and the
    new ones; ``--force`` then only lets a named node's key pair be replaced. Without a CA, or
    with ``--force`` and a new ``--host``, a new CA is made. ``--days`` (default 365) applies to
    the certificates written; adding node keys alone writes none, so it is refused there.
    """
    hosts, nodes = check_hosts(args.host or []), check_node_names(args.node or [])
    days = DEFAULT_CERT_DAYS if args.days is None else args.days
    certs = LabCertificates(Path(args.out))
    if certs.ca_cert.exists() and hosts_covered(certs, hosts) and nodes:
        if args.days is not None:
            raise DeployError(f"--days {args.days}: adding node keys writes no certificate (node keys do not expire); "
                              "drop --days, or give a new --host to re-sign server.pem for that many days")
        add_node_keys(certs.root, nodes, overwrite=args.force)
        print(f"added to {certs.root}: " + ", ".join(f"nodes/{n}" for n in nodes) + " (copy each to its device; register "
              "nodes/<name>.pub); ca.pem and server.pem unchanged")
        return 0
    if certs.ca_cert.exists() and hosts and not hosts_covered(certs, hosts) and not args.force:
        valid_for = add_server_hosts(certs.root, hosts, nodes, days=days)
        print(f"re-signed {certs.server_cert} with the lab's CA for {', '.join(valid_for)}: restart the SuperLink with the new "
              "server.pem/server.key; ca.pem unchanged (the devices keep theirs)"
              + (", added " + ", ".join(f"nodes/{n}" for n in nodes) + " (copy each to its device; register nodes/<name>.pub)" if nodes else ""))
        return 0
    replacing = certs.ca_cert.exists()
    if replacing and not args.force:
        raise DeployError(_existing_ca_advice(certs))
    make_lab_certificates(certs.root, hosts, nodes, days=days, overwrite=args.force)
    print(f"wrote {certs.root}: ca.pem (copy to every device{', replacing the old one there' if replacing else ''}), "
          "server.pem/server.key (SuperLink), nodes/<name> (one per device; register nodes/<name>.pub); keep ca.key off the devices")
    return 0


def _existing_ca_advice(certs: LabCertificates) -> str:
    """Why ``deploy certs`` will not replace the CA in ``certs`` without ``--force``, and what to do."""
    return (f"{certs.root} already has a CA: add node keys with --node NAME, another server address with --host, "
            "or pass --force to replace the CA (every device then needs the new ca.pem; node keys are kept)")


def _federation_config(args: argparse.Namespace) -> None:
    """Write the federation into ``--flwr-home``'s ``config.toml``; with ``--dry-run`` print it instead."""
    address = f"{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    ca = LabCertificates(Path(args.certs)).ca_cert if args.certs else None
    if args.dry_run:
        path, text = flower_config_text(args.flwr_home, address, name=args.federation, root_certificates=ca)
        print(f"fedsplit deploy: would write federation {args.federation!r} -> {address} into {path} (--dry-run: not written):\n"
              + text, file=sys.stderr, end="" if text.endswith("\n") else "\n")
        return
    path = write_flower_config(args.flwr_home, address, name=args.federation, root_certificates=ca)
    print(f"fedsplit deploy: federation {args.federation!r} -> {address} in {path}", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``deploy`` to the ``fedsplit`` command."""
    p = subparsers.add_parser(
        "deploy",
        help="run fedsplit on real devices with Flower's deployment engine (certificates, SuperLink, SuperNodes, runs)",
        description="Thin wrappers around flower-superlink, flower-supernode and flwr run with fedsplit's lab defaults: "
        "TLS, SuperNode authentication, no per-run dependency installation. See README, 'From simulation to a lab of devices'.",
    )
    p.set_defaults(func=cmd_deploy)
    sub = p.add_subparsers(dest="deploy_command", metavar="STEP")
    sub.required = True

    c = sub.add_parser("certs", help="make a CA, the SuperLink's TLS certificate and SuperNode key pairs")
    c.add_argument("--out", default="certs", type=output_folder, help="folder to write (default: certs)")
    c.add_argument("--host", action="append", metavar="NAME_OR_IP", help="an address devices dial to reach the SuperLink (repeat); loopback is always included")
    c.add_argument("--node", action="append", metavar="NAME",
                   help="a SuperNode to make a key pair for (repeat), e.g. pi-0; with a CA already in --out, only the new key pairs are added")
    c.add_argument("--days", type=positive_int, default=None,
                   help=f"validity of the certificates written, in days (at least 1; default {DEFAULT_CERT_DAYS}; a re-signed server.pem ends no later than the CA)")
    c.add_argument("--force", action="store_true",
                   help="replace an existing CA (every device then needs the new ca.pem); when only adding --node keys, replace those nodes' key pairs")

    s = sub.add_parser("superlink", help="start flower-superlink (TLS + SuperNode authentication with --certs)")
    s.add_argument("--host", default="127.0.0.1", help="listen address; anything but loopback needs --certs or --allow-insecure")
    s.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"the SuperLink's HTTP port (default {DEFAULT_PORT})")
    s.add_argument("--certs", help="folder made by `fedsplit deploy certs` (enables TLS)")
    s.add_argument("--no-node-auth", action="store_true", help="accept any SuperNode (TLS only)")
    s.add_argument("--allow-insecure", action="store_true", help="run without TLS on a non-loopback address (you insist)")
    s.add_argument("--database", help="SQLite file for the SuperLink's state (default: in memory)")
    s.add_argument("--log-file", help="also write the SuperLink's log to this file")
    s.add_argument("--flwr-home", type=output_folder,
                   help="write the federation into FLWR_HOME/config.toml for `fedsplit deploy run` (--dry-run prints it instead)")
    s.add_argument("--federation", default=DEFAULT_FEDERATION, help="federation name in the Flower config")

    n = sub.add_parser("supernode", help="start flower-supernode for one terminal (partition) and device profile")
    n.add_argument("--superlink", required=True, metavar="HOST:PORT", type=superlink_address)
    n.add_argument("--partition-id", type=non_negative_int, required=True, help="this device's terminal, 0 to --num-partitions - 1")
    n.add_argument("--num-partitions", type=positive_int, required=True, help="the number of terminals (SuperNodes) of the run")
    n.add_argument("--profile", help="device profile name, e.g. raspberry-pi-4 (node config device-profile): a built-in one, "
                   "or one --config defines")
    n.add_argument("--config", "-c", metavar="FILE", help="the run's fedsplit TOML configuration, for a --profile its [profiles] define")
    n.add_argument("--root-certificates", metavar="CA_PEM", help="the lab's ca.pem (enables TLS)")
    n.add_argument("--private-key", help="this node's key from `fedsplit deploy certs --node NAME`")
    n.add_argument("--runtime-port", type=port_number, default=9094, help="local Runtime API port (one per SuperNode on a machine)")
    n.add_argument("--max-retries", type=non_negative_int, help="give up reconnecting after this many tries (default: never)")
    n.add_argument("--max-wait-time", type=positive_seconds, help="give up reconnecting after this many seconds (default: never)")
    n.add_argument("--allow-insecure", action="store_true", help="connect without TLS to a non-loopback SuperLink (you insist)")
    n.add_argument("--measure-profile", action="store_true",
                   help="measure this device (a FLOP/s probe on the first message, the link from timed exchanges) "
                   "instead of trusting --profile's numbers; the ledger gets measured seconds next to the modelled")

    r = sub.add_parser("register", help="admit a SuperNode's public key (flwr supernode register)")
    r.add_argument("public_key", help="nodes/<name>.pub from `fedsplit deploy certs`")
    r.add_argument("--federation", default=DEFAULT_FEDERATION)
    r.add_argument("--flwr-home", help="FLWR_HOME holding the federation's config.toml")

    u = sub.add_parser("run", help="start a run: flwr run APP FEDERATION with fedsplit's config and overrides")
    u.add_argument("app", nargs="?", default=".", help="the app folder (fedsplit's checkout, with pyproject.toml)")
    u.add_argument("--federation", default=DEFAULT_FEDERATION)
    u.add_argument("--config", "-c", help="fedsplit TOML configuration (path as seen by the SuperLink's machine)")
    u.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a field, e.g. --set rounds=30")
    u.add_argument("--flwr-home", help="FLWR_HOME holding the federation's config.toml")

    for q in (s, n, r, u):
        q.add_argument("--dry-run", action="store_true", help="print the Flower command and start nothing")
    c.set_defaults(dry_run=False, flwr_home=None)
    n.set_defaults(flwr_home=None)
