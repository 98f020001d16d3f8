"""Certificates and node keys for a lab deployment (``fedsplit deploy certs``).

A lab needs three kinds of secrets, all made here with the ``cryptography`` package (installed
with Flower):

- a private certificate authority (``ca.pem``, ``ca.key``): every device trusts it;
- the SuperLink's TLS certificate signed by that CA (``server.pem``, ``server.key``), valid for
  the names and addresses the devices dial (``localhost`` and ``127.0.0.1`` always included);
- one EC P-384 key pair per SuperNode in OpenSSH format (``nodes/<name>``, ``nodes/<name>.pub``):
  the SuperLink, started with ``--enable-supernode-auth``, admits only nodes whose public key was
  registered (``flwr supernode register nodes/<name>.pub <federation>``).

Private keys are written with mode ``0600``. Keep ``ca.key`` off the devices: it is only needed to
sign further certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names every server certificate is valid for, so that loopback tests and a local run work.
LOOPBACK_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


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


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


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


def make_lab_certificates(
    out_dir: str | Path,
    hosts: Sequence[str] = (),
    nodes: Sequence[str] = (),
    *,
    days: int = 365,
    overwrite: bool = False,
) -> LabCertificates:
    """Make a CA, a SuperLink certificate and SuperNode key pairs under ``out_dir``.

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
        Validity of the certificates.
    overwrite : bool
        Replace an existing CA. Without it an existing ``ca.pem`` raises :class:`FileExistsError`,
        so a second call cannot silently invalidate the certificates already on the devices.

    Returns
    -------
    LabCertificates
        The paths of what was written.
    """
    certs = LabCertificates(Path(out_dir))
    if certs.ca_cert.exists() and not overwrite:
        raise FileExistsError(f"{certs.ca_cert} exists: pass overwrite=True (--force) to make a new CA, "
                              "then copy the new ca.pem to every device")
    certs.root.mkdir(parents=True, exist_ok=True)
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
    _write_private(certs.ca_key, _key_pem(ca_key))
    certs.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

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
    _write_private(certs.server_key, _key_pem(server_key))
    certs.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))

    for name in nodes:
        make_node_key(certs, name)
    return certs


def make_node_key(certs: LabCertificates, name: str) -> tuple[Path, Path]:
    """Make SuperNode ``name``'s EC P-384 key pair (OpenSSH format) and return (private, public)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"node name {name!r}: use letters, digits and dashes, e.g. pi-0")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(certs.node_key(name), private)
    certs.node_public_key(name).write_bytes(public + f" fedsplit-{name}\n".encode())
    return certs.node_key(name), certs.node_public_key(name)
