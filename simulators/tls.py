"""A private certificate authority for the simulated rack's HTTPS services.

Real BMCs, CDUs and PDUs serve Redfish over HTTPS only, so the simulated ones do too; clients
(the coolctl Redfish driver, the DMTF validators, tests) are meant to trust a CA file, not to
switch verification off. One CA and one server certificate for 127.0.0.1, ::1 and localhost are
made per simulation and shared by every simulated service, so that 256 BMCs cost one key pair.

Keys are ECDSA P-256: generating one takes well under a millisecond, where RSA-2048 takes tens,
and every TLS client coolctl meets accepts it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "TlsMaterial",
    "client_ssl_context",
    "create_tls_material",
    "issue_certificate",
    "server_ssl_context",
]

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
SERVER_CERT, SERVER_KEY = "server.pem", "server-key.pem"
SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1", "::1")
_VALIDITY = datetime.timedelta(days=365)
_BACKDATE = datetime.timedelta(minutes=5)  # a client clock slightly behind still accepts


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Where the CA and the server certificate of one simulation are, as PEM files."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "coolctl simulated rack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _create_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("coolctl simulation CA")
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str = "localhost",
    *,
    client: bool = False,
) -> x509.Certificate:
    """A TLS server certificate for loopback, signed by the CA (with `client`, a client
    certificate instead, for listeners that ask for one).

    It carries what strict verifiers (OpenSSL's X509_STRICT, Python 3.13's default context)
    insist on: subject alternative names, key identifiers and the serverAuth usage.
    """
    now = _now()
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write `path` whole, born with its final mode: a private key is never readable by
    others, not even between its creation and a chmod. The bytes go to a fresh file created
    exclusively (no symlink followed, none replaced) and then take the name by rename."""
    mode = 0o600 if private else 0o644
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, mode)  # the umask may have taken bits from a public file
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    """The CA already in `directory`, if both files are there and usable; else None."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.not_valid_after_utc <= _now():
        return None
    return key, cert


def create_tls_material(directory: Path) -> TlsMaterial:
    """Make (or reuse) the CA in `directory` and issue a fresh loopback server certificate.

    A CA already there is kept, so that clients told to trust it once keep trusting a restarted
    simulation; the server certificate is issued anew each time, it costs nothing.
    """
    directory.mkdir(parents=True, exist_ok=True)
    existing = _load_ca(directory)
    if existing is None:
        ca_key, ca_cert = _create_ca()
        _write(directory / CA_KEY, _key_pem(ca_key), private=True)
        _write(directory / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        ca_key, ca_cert = existing
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(ca_key, ca_cert, key.public_key())
    _write(directory / SERVER_KEY, _key_pem(key), private=True)
    _write(directory / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return TlsMaterial(
        directory=directory,
        ca_cert=directory / CA_CERT,
        ca_key=directory / CA_KEY,
        server_cert=directory / SERVER_CERT,
        server_key=directory / SERVER_KEY,
    )


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server-side context (TLS 1.2 or later) presenting one certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def client_ssl_context(ca_file: Path) -> ssl.SSLContext:
    """A verifying client context that trusts exactly the simulation's CA."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
