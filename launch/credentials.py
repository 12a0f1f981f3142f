"""``fedmosaic credentials``: a CA, SuperLink TLS certificates and SuperNode keys, made offline.

Flower 1.41 secures a deployment in two layers, and this module makes what both need with
``cryptography``, nothing fetched:

- **TLS** on every SuperLink (the cloud's and each edge's): a private certificate authority
  (ECDSA P-384, self-signed, ``ca.crt``) signs one server certificate per SuperLink whose
  subject alternative names are the hosts the SuperNodes and ``flwr`` dial, plus loopback
  (the SuperLink's own ServerApp runner dials it there)
  (``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile cloud.crt --ssl-keyfile
  cloud.key``). SuperNodes and ``flwr`` verify it against ``ca.crt``
  (``--root-certificates``, ``root-certificates`` in ``config.toml``); a client that does not
  speak TLS gets no connection.
- **SuperNode authentication** (``--enable-supernode-auth``): each SuperNode holds an ECDSA
  P-384 key pair in OpenSSH format (``--auth-supernode-private-key``) and signs its requests;
  the SuperLink serves only nodes whose public key was registered with ``flwr supernode
  register KEY.pub``. Devices register with the SuperLink they talk to (their edge's, or the
  cloud's without edges); each edge's own SuperNode registers with the cloud.

The folder (``N`` devices, ``E`` edges)::

    ca.crt  ca.key                      the authority (keep ca.key off the deployed machines)
    superlinks/cloud.crt  cloud.key     one per SuperLink: cloud, edge-0 ... edge-(E-1)
    supernodes/device-P.key  .pub       one pair per device P and per edge SuperNode edge-E

Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
"""Subject alternative names every SuperLink certificate carries besides its hosts: the
SuperLink's own ServerApp runner (``flower-superexec``) and ``flwr`` on the same machine dial
it on loopback."""
CLOUD = "cloud"


def edge_name(edge_id: int) -> str:
    """The name of edge ``edge_id``'s SuperLink certificate and of its SuperNode's key."""
    return f"edge-{edge_id}"


def device_name(partition_id: int) -> str:
    """The name of device ``partition_id``'s SuperNode key."""
    return f"device-{partition_id}"


@dataclass(frozen=True)
class Credentials:
    """Paths into a folder made by :func:`create_credentials`."""

    folder: Path

    @property
    def ca_certificate(self) -> Path:
        """The authority's certificate: what SuperNodes and ``flwr`` trust."""
        return self.folder / "ca.crt"

    def superlink(self, name: str) -> tuple[Path, Path]:
        """SuperLink ``name``'s (certificate, private key); ``name`` is ``cloud`` or ``edge-E``."""
        return (self.folder / "superlinks" / f"{name}.crt",
                self.folder / "superlinks" / f"{name}.key")

    def supernode(self, name: str) -> tuple[Path, Path]:
        """SuperNode ``name``'s (private key, public key), OpenSSH format."""
        return (self.folder / "supernodes" / f"{name}.key",
                self.folder / "supernodes" / f"{name}.pub")

    def superlink_tls_flags(self, name: str) -> list[str]:
        """``flower-superlink`` flags serving TLS with SuperLink ``name``'s certificate."""
        certificate, key = self.superlink(name)
        return ["--ssl-ca-certfile", str(self.ca_certificate), "--ssl-certfile",
                str(certificate), "--ssl-keyfile", str(key)]

    def supernode_flags(self, name: str) -> list[str]:
        """``flower-supernode`` flags: trust the CA and authenticate as SuperNode ``name``."""
        return ["--root-certificates", str(self.ca_certificate),
                "--auth-supernode-private-key", str(self.supernode(name)[0])]

    def check(self, superlinks: Sequence[str], supernodes: Sequence[str]) -> None:
        """Raise ``FileNotFoundError`` naming every file these roles need that is missing."""
        needed = [self.ca_certificate, *(p for n in superlinks for p in self.superlink(n)),
                  *(p for n in supernodes for p in self.supernode(n))]
        missing = [str(path) for path in needed if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"credentials folder {self.folder} lacks {len(missing)} file(s) this "
                f"deployment needs, e.g. {missing[:3]}; make them with `fedmosaic credentials "
                f"--devices N --edges E --out {self.folder}`")


def create_credentials(folder: Path, devices: int, edges: int = 0,
                       cloud_hosts: Sequence[str] = (),
                       edge_hosts: Sequence[str] = (), valid_days: int = 365) -> Credentials:
    """Write a CA, ``1 + edges`` SuperLink certificates and ``devices + edges`` SuperNode keys.

    Args:
        folder: Where to write (module docstring); its earlier CA, certificates and keys are
            replaced, so a new CA never mixes with old certificates.
        devices: Device SuperNodes (keys ``device-0`` ... ``device-(devices-1)``).
        edges: Edge aggregators: a SuperLink certificate and a SuperNode key each.
        cloud_hosts: Names and IP addresses the cloud SuperLink is reached by (the loopback
            names :data:`LOOPBACK_HOSTS` are always added).
        edge_hosts: One host per edge, in edge order (loopback names only when empty).
        valid_days: How long the certificates are valid.

    Raises:
        ValueError: On a negative count or a host list that does not match the edges.
    """
    if devices < 0 or edges < 0:
        raise ValueError(f"devices and edges must be >= 0, got {devices} and {edges}")
    if edge_hosts and len(edge_hosts) != edges:
        raise ValueError(f"give one --edge-host per edge: {edges} edge(s), {len(edge_hosts)} "
                         f"host(s) ({list(edge_hosts)})")
    credentials = Credentials(Path(folder).expanduser().resolve())
    for sub in ("superlinks", "supernodes"):  # nothing signed by an earlier CA stays behind
        shutil.rmtree(credentials.folder / sub, ignore_errors=True)
        (credentials.folder / sub).mkdir(parents=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days))
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmosaic deployment CA")])
    ca_certificate = (
        x509.CertificateBuilder().subject_name(ca_subject).issuer_name(ca_subject)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(validity[0]).not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA384()))
    credentials.ca_certificate.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    _write_private(credentials.folder / "ca.key", _pem(ca_key))

    links = {CLOUD: list(cloud_hosts)}
    for edge_id in range(edges):
        links[edge_name(edge_id)] = [edge_hosts[edge_id]] if edge_hosts else []
    ca_identifier = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    for name, named_hosts in links.items():
        hosts = list(dict.fromkeys([*named_hosts, *LOOPBACK_HOSTS]))
        key = ec.generate_private_key(ec.SECP384R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0]).not_valid_after(validity[1])
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_identifier), critical=False)
            .sign(ca_key, hashes.SHA384()))
        certificate_path, key_path = credentials.superlink(name)
        certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_private(key_path, _pem(key))

    for name in [device_name(p) for p in range(devices)] + [edge_name(e) for e in range(edges)]:
        key = ec.generate_private_key(ec.SECP384R1())
        private_path, public_path = credentials.supernode(name)
        _write_private(private_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()))
        public_path.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return credentials


def _san(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for a name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only (created 0600, never briefly world-readable)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
