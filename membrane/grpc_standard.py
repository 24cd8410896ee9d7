"""The standard gRPC services every membrane gRPC server carries, so that the usual tools work
against it: health checking (`grpc.health.v1.Health`: grpc_health_probe, Kubernetes `grpc`
probes, load balancers) and server reflection (`grpc.reflection.v1alpha.ServerReflection`:
grpcurl, grpcui, Postman list and call the services without the .proto files).

Works with a threaded `grpc.server` and with a `grpc.aio` server; for the latter, statuses
are set on the server's event loop (`loop`) from any other thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_SERVICE = health.SERVICE_NAME
REFLECTION_SERVICE = reflection.SERVICE_NAME


class StandardServices:
    """Health and reflection added to `server` for the application `services` it serves.

    The overall status (service "") is SERVING from the start; each application service
    starts as `serving` says and follows `set_serving`; `shutting_down` turns every status
    to NOT_SERVING for good (call it before stopping the server, so clients move away).
    """

    def __init__(self, server: grpc.Server | aio.Server, services: Iterable[str],
                 loop: asyncio.AbstractEventLoop | None = None, serving: bool = True) -> None:
        self.services = tuple(services)
        self._loop = loop
        self._health: Any
        if isinstance(server, aio.Server):
            if loop is None:
                raise ValueError("an aio server needs the event loop it runs on")
            self._health = health.aio.HealthServicer()
        else:
            self._health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*self.services, HEALTH_SERVICE, REFLECTION_SERVICE), server)
        self._initial = serving

    async def start_async(self) -> None:
        """aio: set the initial statuses (on the loop, before the server starts)."""
        for name in self.services:
            await self._health.set(name, SERVING if self._initial else NOT_SERVING)

    def start(self) -> None:
        """Threaded server: set the initial statuses."""
        self.set_serving(self._initial)

    def set_serving(self, serving: bool) -> None:
        """Every application service SERVING or NOT_SERVING (from any thread but the loop's)."""
        for name in self.services:
            self._call(self._health.set, name, SERVING if serving else NOT_SERVING)

    async def set_serving_async(self, serving: bool) -> None:
        """aio, on the loop: as `set_serving`."""
        for name in self.services:
            await self._health.set(name, SERVING if serving else NOT_SERVING)

    def shutting_down(self) -> None:
        """Every status NOT_SERVING from now on (from any thread but the loop's)."""
        self._call(self._health.enter_graceful_shutdown)

    async def shutting_down_async(self) -> None:
        """aio, on the loop: as `shutting_down`."""
        await self._health.enter_graceful_shutdown()

    def _call(self, method: Any, *args: Any) -> None:
        if self._loop is None:
            method(*args)
            return
        coroutine: Coroutine[Any, Any, None] = method(*args)
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)
