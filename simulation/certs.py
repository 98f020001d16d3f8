"""Certificates and node keys for a lab deployment (``fedsplit deploy certs``).

A lab needs three kinds of secrets, all made here with the ``cryptography`` package (installed
with Flower):

- a private certificate authority (``ca.pem``, ``ca.key``): every device trusts it;
- the SuperLink's TLS certificate signed by that CA (``server.pem``, ``server.key``), valid for
  the names and addresses the devices dial (``localhost`` and ``127.0.0.1`` always included);
- one EC P-384 key pair per SuperNode in OpenSSH format (``nodes/<name>``, ``nodes/<name>.pub``):
  the SuperLink, started with ``--enable-supernode-auth``, admits only nodes whose public key was
  registered (``flwr supernode register nodes/<name>.pub <federation>``). These keys are not
  signed by the CA and do not depend on it: more can be added to a lab at any time
  (:func:`add_node_keys`), and a new CA leaves the registered ones valid.

Private keys are written with mode ``0600``. Keep ``ca.key`` off the devices: it is only needed to
sign further certificates, such as a new ``server.pem`` when the server gets another address
(:func:`add_server_hosts`: the devices keep their ``ca.pem``).

Every input is checked before anything is written, and a call writes all its files or none:
they are written into a hidden staging folder first and then moved into place; a failure on the
way removes what the call had created and restores the files it was replacing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names every server certificate is valid for, so that loopback tests and a local run work.
LOOPBACK_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
#: Validity of the certificates ``deploy certs`` writes unless told (days).
DEFAULT_CERT_DAYS = 365
#: A node name: a safe file name (letters, digits, ``.``, ``_``, ``-``; no leading dot), at most 64 characters.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: One label of a DNS host name.
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class CertificateError(ValueError):
    """An input ``fedsplit deploy certs`` cannot use; the message names the flag and what is allowed."""


@dataclass(frozen=True)
class LabCertificates:
    """Paths of a lab's certificate folder (see :func:`make_lab_certificates`)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate: ``--ssl-ca-certfile`` of the SuperLink, ``--root-certificates`` of a SuperNode."""
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The CA's private key (keep it off the devices)."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The SuperLink's certificate (``--ssl-certfile``)."""
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        """The SuperLink's private key (``--ssl-keyfile``)."""
        return self.root / "server.key"

    def node_key(self, name: str) -> Path:
        """Private key of SuperNode ``name`` (``--auth-supernode-private-key``)."""
        return self.root / "nodes" / name

    def node_public_key(self, name: str) -> Path:
        """Public key of SuperNode ``name`` (``flwr supernode register``)."""
        return self.root / "nodes" / f"{name}.pub"


# --- checks of the inputs (nothing written yet) ------------------------------------------------
def check_node_names(nodes: Iterable[str]) -> list[str]:
    """Return ``nodes`` as a list after checking each is a usable, unique node name.

    Raises
    ------
    CertificateError
        For an empty name, one with a path separator, a leading dot or other characters than
        letters, digits, ``.``, ``_`` and ``-``, one ending in ``.pub`` (it would be another
        node's public key file), or a name given twice.
    """
    names = list(nodes)
    for name in names:
        if not NODE_NAME.fullmatch(name) or name.endswith(".pub"):
            raise CertificateError(
                f"--node {name!r}: a node name is a file name in nodes/: 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit, not ending in '.pub' (e.g. pi-0)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CertificateError(f"--node {repeated[0]!r} is given more than once: every node needs its own name")
    return names


def check_hosts(hosts: Iterable[str]) -> list[str]:
    """Return ``hosts`` as a list after checking each is an IP address or a DNS host name.

    Raises
    ------
    CertificateError
        For anything else (an empty string, a ``host:port``, a URL ...).
    """
    checked = list(hosts)
    for host in checked:
        if not _is_host(host):
            raise CertificateError(
                f"--host {host!r}: not a host name or IP address; give the address the devices dial, alone "
                "(e.g. 192.168.1.10 or lab-server; the port goes to `fedsplit deploy superlink --port`)")
    return checked


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


def check_days(days: int) -> int:
    """Return ``days`` after checking it is a whole number of days, at least 1.

    Raises
    ------
    CertificateError
        For 0 (an already expired certificate), a negative number or a non-integer.
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise CertificateError(f"--days {days!r}: the certificates' validity must be a whole number of days, at least 1 (default {DEFAULT_CERT_DAYS})")
    return days


def server_hosts(certs: LabCertificates) -> set[str] | None:
    """The names and addresses the existing ``server.pem`` is valid for, or None without a readable one."""
    try:
        server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
        san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    names = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    return names | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def hosts_covered(certs: LabCertificates, hosts: Iterable[str]) -> bool:
    """Whether the existing ``server.pem`` is already valid for every one of ``hosts`` (True for none)."""
    wanted = [_canonical_host(h) for h in hosts]
    if not wanted:
        return True
    existing = server_hosts(certs)
    return existing is not None and set(wanted) <= existing


def _canonical_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.rstrip(".").lower()


def _refuse_existing_nodes(certs: LabCertificates, names: Sequence[str]) -> None:
    for name in names:
        for path in (certs.node_key(name), certs.node_public_key(name)):
            if path.exists():
                raise FileExistsError(
                    f"--node {name}: {path} exists (its public key may be registered on the SuperLink): choose another "
                    "name, or pass --force to replace its key pair (then register the new .pub)")


# --- making the secrets in memory ----------------------------------------------------------------
def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # ordered, without repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsplit lab"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_files(certs: LabCertificates, hosts: Sequence[str], days: int) -> dict[Path, tuple[bytes, bool]]:
    """A new CA and the SuperLink's certificate signed by it: path -> (content, private)."""
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedsplit lab CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    return {
        certs.ca_key: (_key_pem(ca_key), True),
        certs.ca_cert: (ca_cert.public_bytes(serialization.Encoding.PEM), False),
        **_server_files(certs, ca_key, ca_name, hosts, now, until),
    }


def _server_files(
    certs: LabCertificates, ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, hosts: Sequence[str], now: dt.datetime, until: dt.datetime
) -> dict[Path, tuple[bytes, bool]]:
    """A new SuperLink key and its certificate for ``hosts`` (plus loopback), signed by the CA."""
    server_key = ec.generate_private_key(ec.SECP384R1())
    all_hosts = [*hosts, *LOOPBACK_NAMES]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(all_hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(all_hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return {
        certs.server_key: (_key_pem(server_key), True),
        certs.server_cert: (server_cert.public_bytes(serialization.Encoding.PEM), False),
    }


def _node_files(certs: LabCertificates, name: str) -> dict[Path, tuple[bytes, bool]]:
    """SuperNode ``name``'s new EC P-384 key pair (OpenSSH format): path -> (content, private)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return {certs.node_key(name): (private, True), certs.node_public_key(name): (public + f" fedsplit-{name}\n".encode(), False)}


# --- writing all or nothing ----------------------------------------------------------------------
def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; return the folders created, outermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    for folder in missing:
        folder.mkdir()
    return missing


def _write_new(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_all(root: Path, files: Mapping[Path, tuple[bytes, bool]]) -> None:
    """Write ``files`` (path -> (content, private)) under ``root``, all or none.

    They are written into a hidden staging folder in ``root`` first, then moved into place
    (replacing files of the same name); if anything fails, the files moved in are removed, those
    they replaced are put back, and the folders this call created are removed.
    """
    created = _make_dirs(root)
    placed: list[tuple[Path, Path | None]] = []  # (target, what it replaced, kept in staging)
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=".fedsplit-certs-", dir=root))
        staged = []
        for i, (target, (data, private)) in enumerate(files.items()):
            _write_new(staging / str(i), data, private)
            staged.append((staging / str(i), target))
        for source, target in staged:
            created += _make_dirs(target.parent)
            backup = None
            if target.exists():
                backup = source.with_name(source.name + ".replaced")
                os.rename(target, backup)
            placed.append((target, backup))
            os.rename(source, target)
    except BaseException:
        _undo(placed, created)
        raise
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _undo(placed: Sequence[tuple[Path, Path | None]], created: Sequence[Path]) -> None:
    """Take back what :func:`_write_all` had done when it failed."""
    for target, backup in reversed(placed):
        target.unlink(missing_ok=True)
        if backup is not None:
            os.rename(backup, target)
    for folder in reversed(created):
        shutil.rmtree(folder, ignore_errors=True)


# --- the public entry points ---------------------------------------------------------------------
def make_lab_certificates(
    out_dir: str | Path,
    hosts: Sequence[str] = (),
    nodes: Sequence[str] = (),
    *,
    days: int = DEFAULT_CERT_DAYS,
    overwrite: bool = False,
) -> LabCertificates:
    """Make a CA, a SuperLink certificate and SuperNode key pairs under ``out_dir``.

    Every input is checked before anything is written, and either every file is written or none.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into (created if missing).
    hosts : sequence of str
        Host names or IP addresses the SuperNodes dial to reach the SuperLink (e.g. the server's
        LAN address); the loopback names are always added.
    nodes : sequence of str
        Names of SuperNodes to make authentication key pairs for (e.g. ``pi-0``, ``pi-1``).
    days : int
        Validity of the certificates, at least 1.
    overwrite : bool
        Replace an existing CA (and the named nodes' key pairs). Without it an existing
        ``ca.pem`` or node key raises :class:`FileExistsError`, so a second call cannot silently
        invalidate the certificates already on the devices. Other node keys are kept.

    Returns
    -------
    LabCertificates
        The paths of what was written.

    Raises
    ------
    CertificateError
        For a node name, host or validity that cannot be used (see :func:`check_node_names`,
        :func:`check_hosts`, :func:`check_days`).
    FileExistsError
        For an existing CA or node key without ``overwrite``.
    """
    hosts, nodes, days = check_hosts(hosts), check_node_names(nodes), check_days(days)
    certs = LabCertificates(Path(out_dir))
    if certs.ca_cert.exists() and not overwrite:
        raise FileExistsError(f"{certs.ca_cert} exists: pass --force to make a new CA (every device then needs the new ca.pem), "
                              "or give only --node to add node keys beside it")
    if not overwrite:
        _refuse_existing_nodes(certs, nodes)
    files = _ca_files(certs, hosts, days)
    for name in nodes:
        files.update(_node_files(certs, name))
    _write_all(certs.root, files)
    return certs


def add_node_keys(out_dir: str | Path, nodes: Sequence[str], *, overwrite: bool = False) -> LabCertificates:
    """Add SuperNode key pairs to a lab's folder, leaving its CA and server certificate as they are.

    The key pairs are plain OpenSSH keys (SuperNode authentication), not certificates: adding
    one needs neither the CA nor its key.

    Parameters
    ----------
    out_dir : str or Path
        The lab's certificate folder (created if missing).
    nodes : sequence of str
        Names of the new SuperNodes (at least one).
    overwrite : bool
        Replace the key pair of a node that already has one (its old public key then no longer
        matches what the SuperLink registered).

    Returns
    -------
    LabCertificates
        The lab's paths.

    Raises
    ------
    CertificateError
        For no node or a node name that cannot be used.
    FileExistsError
        For a node that already has a key pair, without ``overwrite``.
    """
    nodes = check_node_names(nodes)
    if not nodes:
        raise CertificateError("no --node given: name the SuperNodes to make key pairs for, e.g. --node pi-3")
    certs = LabCertificates(Path(out_dir))
    if not overwrite:
        _refuse_existing_nodes(certs, nodes)
    files: dict[Path, tuple[bytes, bool]] = {}
    for name in nodes:
        files.update(_node_files(certs, name))
    _write_all(certs.root, files)
    return certs


def add_server_hosts(
    out_dir: str | Path, hosts: Sequence[str], nodes: Sequence[str] = (), *, days: int = DEFAULT_CERT_DAYS, overwrite_nodes: bool = False
) -> list[str]:
    """Re-sign the SuperLink's certificate with the lab's own CA for more addresses.

    The new ``server.pem`` (with a new ``server.key``) is valid for the addresses of the old one
    and ``hosts``; ``ca.pem`` is unchanged, so the devices keep theirs and only the SuperLink is
    restarted with the new pair. ``nodes`` get key pairs in the same all-or-nothing write.

    Parameters
    ----------
    out_dir : str or Path
        The lab's certificate folder, holding ``ca.pem`` and ``ca.key``.
    hosts : sequence of str
        Names or addresses to add (e.g. the server's new LAN address).
    nodes : sequence of str
        SuperNodes to make key pairs for as well.
    days : int
        Validity of the new certificate in days, at least 1; it ends no later than the CA.
    overwrite_nodes : bool
        Replace the key pair of a named node that already has one.

    Returns
    -------
    list of str
        The names and addresses the new certificate is valid for, loopback last.

    Raises
    ------
    CertificateError
        For an input that cannot be used, a missing or unreadable ``ca.key``, or an expired CA.
    FileExistsError
        For a node that already has a key pair, without ``overwrite_nodes``.
    """
    hosts, nodes, days = check_hosts(hosts), check_node_names(nodes), check_days(days)
    certs = LabCertificates(Path(out_dir))
    try:
        ca_cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(
            f"cannot sign a certificate for --host {' '.join(hosts)} with the lab's CA ({type(exc).__name__}: {exc}); "
            "restore ca.pem and ca.key, or pass --force to make a new CA (every device then needs the new ca.pem)") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.public_key() != ca_cert.public_key():
        raise CertificateError(f"{certs.ca_key} is not the key of {certs.ca_cert}: pass --force to make a new CA")
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_until = ca_cert.not_valid_after_utc
    if ca_until <= now + dt.timedelta(days=1):
        raise CertificateError(f"the lab's CA expires on {ca_until:%Y-%m-%d}: pass --force to make a new CA (every device then needs the new ca.pem)")
    old = sorted(server_hosts(certs) or set())
    names = [h for h in dict.fromkeys([*(_canonical_host(h) for h in hosts), *old]) if h not in LOOPBACK_NAMES]
    if not overwrite_nodes:
        _refuse_existing_nodes(certs, nodes)
    files = _server_files(certs, ca_key, ca_cert.subject, names, now, min(now + dt.timedelta(days=days), ca_until))
    for name in nodes:
        files.update(_node_files(certs, name))
    _write_all(certs.root, files)
    return [*names, *LOOPBACK_NAMES]


def make_node_key(certs: LabCertificates, name: str) -> tuple[Path, Path]:
    """Make SuperNode ``name``'s EC P-384 key pair (OpenSSH format), replacing an existing one,
    and return (private, public)."""
    add_node_keys(certs.root, [name], overwrite=True)
    return certs.node_key(name), certs.node_public_key(name)
