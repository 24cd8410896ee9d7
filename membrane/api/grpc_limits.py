"""What one gRPC client may cost a membrane server: message sizes, streams per connection and
RPCs in flight. Pure data (channel/server option tuples); the gRPC adapters pass them on.

Requests to both servers are small (a subscription, an ack, a flow filter), so what a client
may send is bounded tightly; what a server sends is bounded by the largest legitimate answer
(a state delta of many objects, a batch of flows). Streams per HTTP/2 connection bound what
one connection can open; RPCs in flight bound the whole server (beyond them a call is refused
with RESOURCE_EXHAUSTED instead of queueing without end).
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1 << 10
MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    recv_bytes: int  # largest message the server accepts from a client
    send_bytes: int  # largest message the server sends
    streams_per_connection: int  # concurrent HTTP/2 streams one connection may open
    rpcs_in_flight: int  # concurrent RPCs over all connections

    def server_options(self) -> list[tuple[str, int]]:
        return [("grpc.max_receive_message_length", self.recv_bytes),
                ("grpc.max_send_message_length", self.send_bytes),
                ("grpc.max_concurrent_streams", self.streams_per_connection)]

    def client_options(self) -> list[tuple[str, int]]:
        """A client of this server: receives what the server may send, sends what it accepts."""
        return [("grpc.max_receive_message_length", self.send_bytes),
                ("grpc.max_send_message_length", self.recv_bytes)]


# The operator's state stream: an agent holds one Subscribe stream (acks ride on it) plus the
# odd unary call (older agents' Ack, health checks). Thousands of agents, one stream each.
OPERATOR = Limits(recv_bytes=64 * KIB, send_bytes=64 * MIB, streams_per_connection=16,
                  rpcs_in_flight=16384)

# The agent's Observer: a `membranectl observe` or a relay per connection; each follow stream
# holds a worker thread, so the in-flight bound is the worker pool.
OBSERVER_WORKERS = 32
OBSERVER = Limits(recv_bytes=64 * KIB, send_bytes=16 * MIB, streams_per_connection=16,
                  rpcs_in_flight=OBSERVER_WORKERS)
