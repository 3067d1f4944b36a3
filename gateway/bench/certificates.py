"""
A throw-away test PKI for the TLS modes and the TLS tests: a CA (`Authority`) that issues server
certificates for any names, and `make_certificates`, its common case (127.0.0.1 / localhost).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any

__all__ = ["Authority", "make_certificates"]


class Authority:
    """A CA valid from yesterday to the day after tomorrow, its certificate in ``ca_pem``
    (``directory``/ca.pem); `issue` writes server certificates signed by it."""

    def __init__(self, directory: str, name: str = "gateway-bench test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca = (self._builder(self._name, self._key.public_key())
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False,
                                           encipher_only=False, decipher_only=False), critical=True)
              .sign(self._key, hashes.SHA256()))
        self.ca_pem = self._write("ca.pem", ca)

    def _builder(self, subject: Any, public_key: Any) -> Any:
        from cryptography import x509

        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self._name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2)))

    def _write(self, name: str, cert: Any, key: Any = None) -> str:
        from cryptography.hazmat.primitives import serialization

        pem = serialization.Encoding.PEM
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(cert.public_bytes(pem))
        if key is not None:
            with open(path[:-len(".pem")] + ".key.pem", "wb") as f:
                f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        return path

    def issue(self, *names: str, stem: str | None = None) -> tuple[str, str]:
        """A server certificate for ``names`` (host names or IP addresses), the first its common
        name: ``(cert.pem, key.pem)`` paths, named after ``stem`` (default: the names)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[Any] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = (self._builder(subject, key.public_key())
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(self._key, hashes.SHA256()))
        path = self._write((stem or "-".join(names).replace(":", "_")) + ".pem", cert, key)
        return path, path[:-len(".pem")] + ".key.pem"


def make_certificates(directory: str) -> tuple[str, str, str]:
    """A test CA and a server certificate for localhost / 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    authority = Authority(directory)
    cert, key = authority.issue("localhost", "127.0.0.1", stem="cert")
    return authority.ca_pem, cert, key
