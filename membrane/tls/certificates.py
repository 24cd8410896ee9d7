"""The cluster CA and node certificates (the only module that imports `cryptography`).

One small CA signs one certificate per node: the node's name is its subject CN and its only
DNS SAN, usable for client and server authentication (an agent is the state stream's client
and its Observer's server). The operator's server certificate names `OPERATOR_NAME`, which
the signer never grants a node. Keys are ECDSA P-256: cheap handshakes at a thousand agents.
Every input (PEM of a CSR, a certificate, a key) is parsed strictly: garbage is a
`CertificateError` naming what was wrong, never a traceback.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OPERATOR_NAME = "membrane-operator"  # the state stream's server name (clients check it)
CA_NAME = "membrane-ca"
CA_LIFETIME = dt.timedelta(days=3650)
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates start this far back: clocks differ


class CertificateError(ValueError):
    """A certificate, key or CSR that cannot be used, with the reason."""


@dataclass(frozen=True)
class CertFacts:
    """What the control plane reads from a certificate."""

    name: str  # the subject CN (a node name, or OPERATOR_NAME)
    dns_names: tuple[str, ...]
    not_before: float  # Unix seconds
    not_after: float
    serial: int

    @property
    def issued(self) -> float:
        """When it was issued (not_before is backdated by CLOCK_SKEW): renewal counts from here."""
        return min(self.not_before + CLOCK_SKEW.total_seconds(), self.not_after)


@dataclass(frozen=True)
class KeyPair:
    """A PEM private key and the PEM certificate for it."""

    key_pem: bytes
    cert_pem: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the private key is not an ECDSA key")
    return key


def _load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from None


def _utc(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp() if value.tzinfo is None else value.timestamp()


def facts(cert_pem: bytes) -> CertFacts:
    cert = _load_cert(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    return CertFacts(str(names[0].value) if names else "", dns, _utc(before), _utc(after),
                     cert.serial_number)


def _leaf(builder: x509.CertificateBuilder, name: str, lifetime: dt.timedelta,
          start: dt.datetime | None) -> x509.CertificateBuilder:
    begin = (start or _now()) - CLOCK_SKEW
    return (builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .serial_number(x509.random_serial_number())
            .not_valid_before(begin).not_valid_after(begin + CLOCK_SKEW + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                  ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))


class Authority:
    """The cluster CA: its key and self-signed certificate, and the certificates it issues."""

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        self._key = _load_key(key_pem)
        self._cert = _load_cert(cert_pem)
        if _public_der(self._cert.public_key()) != _public_der(self._key.public_key()):
            raise CertificateError("the CA certificate does not belong to the CA key")
        self.key_pem = key_pem
        self.cert_pem = cert_pem

    @classmethod
    def create(cls, lifetime: dt.timedelta = CA_LIFETIME) -> Authority:
        key_pem = new_key_pem()
        key = _load_key(key_pem)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        begin = _now() - CLOCK_SKEW
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(begin).not_valid_after(begin + lifetime)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=True, crl_sign=True,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key_pem, cert.public_bytes(serialization.Encoding.PEM))

    def _sign(self, public_key: ec.EllipticCurvePublicKey, name: str, lifetime: dt.timedelta,
              start: dt.datetime | None = None) -> bytes:
        builder = _leaf(x509.CertificateBuilder(), name, lifetime, start)
        cert = (builder.issuer_name(self._cert.subject).public_key(public_key)
                .sign(self._key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, lifetime: dt.timedelta, start: dt.datetime | None = None) -> KeyPair:
        """A fresh key and a certificate naming `name` (the operator's own, tests)."""
        key_pem = new_key_pem()
        return KeyPair(key_pem, self._sign(_load_key(key_pem).public_key(), name, lifetime, start))

    def sign_request(self, csr_pem: bytes, name: str, lifetime: dt.timedelta) -> bytes:
        """A certificate for the key of a CSR whose subject is exactly `name` (checked by
        `request_name` first: the signer decides the name, never the requester)."""
        csr = _load_csr(csr_pem)
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CertificateError("the CSR's key is not an ECDSA key")
        return self._sign(key, name, lifetime)

    def verify(self, cert_pem: bytes) -> CertFacts:
        """Facts of a certificate this CA signed and that is valid now; else CertificateError."""
        cert = _load_cert(cert_pem)
        if cert.issuer != self._cert.subject:
            raise CertificateError("the certificate was not issued by this CA")
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            raise CertificateError("the certificate's signature names no hash algorithm")
        try:
            self._key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        except InvalidSignature:
            raise CertificateError("the certificate's signature is not this CA's") from None
        found = facts(cert_pem)
        now = _now().timestamp()
        if not found.not_before <= now <= found.not_after:
            raise CertificateError("the certificate is expired or not yet valid")
        return found


def _load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise CertificateError("the certificate request's signature is invalid")
    return csr


def new_request(key_pem: bytes, name: str) -> bytes:
    """A PEM CSR for `name` (subject CN and DNS SAN) signed with `key_pem`."""
    key = _load_key(key_pem)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def request_name(csr_pem: bytes) -> str:
    """The one name a CSR asks for: its subject CN, which every DNS SAN must equal; anything
    else it asks for (other SANs, a CA) makes it a CertificateError."""
    csr = _load_csr(csr_pem)
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or len(csr.subject) != 1:
        raise CertificateError("the CSR's subject must be exactly one common name")
    name = str(names[0].value)
    for ext in csr.extensions:
        if isinstance(ext.value, x509.SubjectAlternativeName):
            if any(not isinstance(g, x509.DNSName) or g.value != name for g in ext.value):
                raise CertificateError(f"the CSR asks for names other than {name!r}")
        elif isinstance(ext.value, x509.BasicConstraints) and ext.value.ca:
            raise CertificateError("the CSR asks for a CA certificate")
    return name


def key_matches(key_pem: bytes, cert_pem: bytes) -> bool:
    try:
        return _public_der(_load_key(key_pem).public_key()) == _public_der(_load_cert(cert_pem).public_key())
    except CertificateError:
        return False


class _PublicKey(Protocol):
    def public_bytes(self, encoding: serialization.Encoding, format: serialization.PublicFormat) -> bytes: ...


def _public_der(key: _PublicKey) -> bytes:
    """A public key's SubjectPublicKeyInfo bytes: equal exactly when the keys are."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
