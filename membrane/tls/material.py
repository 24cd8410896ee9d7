"""`Material`: the TLS files one party holds (CA bundle, its key and certificate) and a
generation that grows when any of them is replaced. Pure data plus PEM facts."""

from __future__ import annotations

from dataclasses import dataclass

from .certificates import CertFacts, facts


@dataclass(frozen=True)
class Material:
    ca_pem: bytes
    key_pem: bytes
    cert_pem: bytes
    generation: int = 0

    @property
    def facts(self) -> CertFacts:
        return facts(self.cert_pem)
