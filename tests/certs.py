"""Throw-away X.509 certificates for TLS tests (the `cryptography` package, EC P-256).

    ca = CertificateAuthority.create(tmp_path, "test-ca")
    server = ca.issue(tmp_path, "server", server=True)      # localhost, 127.0.0.1
    client = ca.issue(tmp_path, "clinic-7", server=False)   # a client certificate for mutual TLS
    server.cert, server.key, ca.cert                        # PEM file paths
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        """(private key PEM, certificate chain PEM), as grpc's credentials take them."""
        return self.key.read_bytes(), self.cert.read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1))


@dataclass(frozen=True)
class CertificateAuthority:
    name: str
    cert: Path
    key_object: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, directory: Path, name: str) -> "CertificateAuthority":
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _validity(x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                            .public_key(key.public_key()).serial_number(x509.random_serial_number()))
        certificate = (builder
                       .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                       .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                    content_commitment=False, key_encipherment=False,
                                                    data_encipherment=False, key_agreement=False,
                                                    encipher_only=False, decipher_only=False), critical=True)
                       .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                       .sign(key, hashes.SHA256()))
        path = directory / f"{name}.pem"
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(name, path, key)

    def issue(self, directory: Path, common_name: str, *, server: bool) -> Issued:
        """A leaf certificate signed by this CA: for a server (SAN localhost + 127.0.0.1) or a client."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        ca_certificate = x509.load_pem_x509_certificate(self.cert.read_bytes())
        builder = _validity(x509.CertificateBuilder().subject_name(_name(common_name))
                            .issuer_name(ca_certificate.subject).public_key(key.public_key())
                            .serial_number(x509.random_serial_number()))
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            self.key_object.public_key()), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        certificate = builder.sign(self.key_object, hashes.SHA256())
        issued = Issued(directory / f"{common_name}.crt", directory / f"{common_name}.key")
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        return issued
