"""Build official `kubernetes` client objects that talk to a stand-in server (plain HTTP, no auth)."""

from __future__ import annotations

from kubernetes import client


def make_configuration(url: str) -> client.Configuration:
    """A Configuration for `url` (e.g. `KubeApiServer.url`), without credentials or TLS."""
    config = client.Configuration()
    config.host = url
    config.verify_ssl = False
    config.api_key = {}
    return config


def make_api_client(url: str) -> client.ApiClient:
    """An ApiClient for `url`; pass it to CoreV1Api(...) and friends, close it when done."""
    return client.ApiClient(make_configuration(url))
