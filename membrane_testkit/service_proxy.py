"""`ServiceProxy`: a Kubernetes Service in small, for tests: one TCP address in front of several
backends, each new connection sent to the next backend in turn (kube-proxy picks a backend per
connection, not per request). Bytes are relayed as they are, so mutual TLS passes through.

A backend that refuses the connection is skipped for that connection, as its endpoint would
be taken out of the Service once its pod is gone. `first` chooses which backend the first
connection goes to, so a test can make clients land on a particular replica.
"""

from __future__ import annotations

import socket
import threading


class ServiceProxy:
    def __init__(self, backends: list[tuple[str, int]], first: int = 0) -> None:
        self.backends = list(backends)
        self.connections = [0] * len(backends)  # accepted connections sent to each backend
        self._next = first
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="service-proxy", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            start, self._next = self._next, (self._next + 1) % len(self.backends)
        for step in range(len(self.backends)):
            index = (start + step) % len(self.backends)
            try:
                upstream = socket.create_connection(self.backends[index], timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._closed:
                    upstream.close()
                    break
                self.connections[index] += 1
                self._open.update((client, upstream))
            back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
            back.start()
            self._pump(client, upstream)
            back.join()
            with self._lock:  # closed only once neither direction uses them
                self._open.difference_update((client, upstream))
            upstream.close()
            break
        client.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):  # one side gone: the connection is over
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            open_now = list(self._open)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self._listener.close()
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> ServiceProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
