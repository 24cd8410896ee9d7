"""`CertKeeper`: this node's TLS material (CA bundle, key, certificate), kept current.

Two sources:
- a directory (`--tls-dir`) holding `ca.crt`, `tls.crt`, `tls.key` (a mounted Secret, as
  cert-manager or the chart writes them): re-read when the files change;
- bootstrap (`--tls-bootstrap`): a CSR through the Kubernetes API (`cert_requesting`) at
  start, then a fresh key and CSR at 2/3 of each certificate's lifetime; the files are kept
  (0600 in a 0700 directory) so a restart reuses a still-valid certificate.
Whoever uses the material asks `current()` at each new connection or handshake; a renewal
bumps `generation`. A renewal that fails keeps the old certificate and is retried.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from membrane.tls.certificates import CertificateError, key_matches, new_key_pem, new_request
from membrane.tls.material import Material
from membrane.tls.renewal import renew_at

log = logging.getLogger("membrane.agent.tls")

CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
RETRY_SECONDS = 5.0
POLL_SECONDS = 1.0

# (key PEM, CSR PEM) -> (CA PEM, certificate PEM)
Requester = Callable[[bytes, bytes], tuple[bytes, bytes]]


class TlsError(RuntimeError):
    """No usable TLS material, with the reason (one line)."""


def read_dir(directory: Path, node: str | None, generation: int = 0) -> Material:
    try:
        material = Material((directory / CA_FILE).read_bytes(), (directory / KEY_FILE).read_bytes(),
                            (directory / CERT_FILE).read_bytes(), generation)
    except OSError as exc:
        raise TlsError(f"TLS material in {directory}: {exc.strerror}: {exc.filename}") from None
    check(material, node, directory)
    return material


def check(material: Material, node: str | None, where: Path) -> None:
    try:
        found = material.facts
    except CertificateError as exc:
        raise TlsError(f"{where / CERT_FILE}: {exc}") from None
    if not key_matches(material.key_pem, material.cert_pem):
        raise TlsError(f"{where / KEY_FILE} is not the key of {where / CERT_FILE}")
    if node is not None and found.name != node:
        raise TlsError(f"{where / CERT_FILE} names {found.name!r}, not this node {node!r}")
    if found.not_after <= time.time():
        raise TlsError(f"{where / CERT_FILE} expired")


def write_dir(directory: Path, material: Material) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name, data in ((CA_FILE, material.ca_pem), (KEY_FILE, material.key_pem), (CERT_FILE, material.cert_pem)):
        tmp = directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, directory / name)


class CertKeeper:
    def __init__(self, node: str, directory: Path, requester: Requester | None = None) -> None:
        self.node = node
        self.directory = directory
        self.requester = requester  # None: the directory is managed by someone else
        self._lock = threading.Lock()
        self._material: Material | None = None
        self._stamp: tuple[float, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0

    def load(self) -> Material:
        """The first material: from the directory, or (bootstrap) a new certificate when the
        directory holds none that is valid for this node. Raises TlsError."""
        try:
            material = read_dir(self.directory, self.node)
            if self.requester is not None and self._due(material):
                raise TlsError("due for renewal")
        except TlsError as exc:
            if self.requester is None:
                raise
            log.info("requesting a certificate", extra={"fields": {"node": self.node, "why": str(exc)}})
            material = self._request(0)
        with self._lock:
            self._material = material
            self._stamp = self._mtimes()
        return material

    def current(self) -> Material:
        with self._lock:
            if self._material is None:
                raise TlsError("TLS material not loaded")
            return self._material

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tls-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    # --- internals ------------------------------------------------------------------------
    @staticmethod
    def _due(material: Material) -> bool:
        found = material.facts
        return time.time() >= renew_at(found.issued, found.not_after)

    def _mtimes(self) -> tuple[float, ...]:
        try:
            return tuple(os.stat(self.directory / n).st_mtime for n in (CA_FILE, KEY_FILE, CERT_FILE))
        except OSError:
            return ()

    def _request(self, generation: int) -> Material:
        assert self.requester is not None
        key_pem = new_key_pem()
        ca_pem, cert_pem = self.requester(key_pem, new_request(key_pem, self.node))
        material = Material(ca_pem, key_pem, cert_pem, generation)
        check(material, self.node, self.directory)
        write_dir(self.directory, material)
        return material

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - keep the old certificate, try again
                log.warning("certificate renewal failed; retrying", extra={"fields": {"error": str(exc)}})
                self._stop.wait(RETRY_SECONDS)

    def _tick(self) -> None:
        old = self.current()
        if self.requester is not None:
            if not self._due(old):
                return
            new = self._request(old.generation + 1)
        else:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return
            new = read_dir(self.directory, self.node, old.generation + 1)
        with self._lock:
            self._material = new
            self._stamp = self._mtimes()
        self.renewals += 1
        found = new.facts
        log.info("certificate renewed", extra={"fields": {
            "node": self.node, "generation": new.generation, "serial": f"{found.serial:x}",
            "not_after": round(found.not_after)}})
