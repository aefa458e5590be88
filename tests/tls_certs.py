"""Throwaway certificates for the TLS tests: a CA, server certificates, client certificates.

Made with the `cryptography` package (in the test environment through flytekit), in
memory and written as PEM files; nothing here is fit for anything but a test.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path
    _key: ec.EllipticCurvePrivateKey
    _name: x509.Name
    folder: Path

    @classmethod
    def create(cls, folder: Path, name: str = "fleet test CA") -> CertificateAuthority:
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        path = folder / f"{_file_name(name)}.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(path, key, subject, folder)

    def server(self, *names: str) -> Issued:
        """A server certificate for these DNS names and IP addresses (the first is its CN)."""
        return self._issue(names[0], names, ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, common_name: str, *sans: str) -> Issued:
        """A client certificate (an agent's: the CN is its dataplane's name)."""
        return self._issue(common_name, sans, ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(
        self, common_name: str, sans: tuple[str, ...], usage: x509.ObjectIdentifier
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = _builder(subject, self._name, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(san) for san in sans]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = self.folder / f"{_file_name(common_name)}-{usage.dotted_string.rsplit('.', 1)[1]}"
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Issued(cert_path, key_path)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name)
