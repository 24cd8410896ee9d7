"""Import contracts of docs/internals.md and ../shared/DESIGN.md, checked on the source (AST):

- the pure core imports no I/O library and nothing outside the core (so it stays pure
  transitively, and unit-testable in milliseconds);
- each I/O library is imported by its adapter modules only, listed here by name: a new import
  anywhere else fails, naming the module (add a module to a list only when it *is* that
  library's adapter);
- the shipped product (membrane, agent, operator) never imports the test kit
  (membrane_testkit: the namespace lab, the Kubernetes API stand-in, fakes), which is not
  shipped (tests/quality/test_packaging.py checks the wheel).
"""

from __future__ import annotations

import sys

from .imports import PRODUCT_FOLDERS, import_graph, module_files, within

CORE = frozenset({
    "membrane.policy", "membrane.selectors", "membrane.labels", "membrane.identities", "membrane.ipam",
    "membrane.ipcache", "membrane.delta", "membrane.map_plan", "membrane.flows", "membrane.k8s_models",
    "membrane.servicemap", "membrane.bandwidth", "membrane.cni_types", "membrane.strict_fields",
    "membrane.api.state_objects", "membrane.prefilter_rules", "membrane.prefilter_model", "membrane.services", "membrane.maglev",
    "membrane.prefilter_objects", "membrane.schema_checking", "membrane.prefilter_checking",
    "membrane.prefilter_converting", "membrane.k8s_meta", "membrane.service_models",
    "membrane.lb_maps",
})
# Third-party libraries the core may use: data modelling only.
CORE_LIBRARIES = frozenset({"pydantic"})
# Standard-library modules that do I/O or concurrency: adapters' business, not the core's.
IO_STDLIB = frozenset({"socket", "subprocess", "sqlite3", "asyncio", "threading", "http", "urllib", "ctypes",
                       "select", "selectors", "multiprocessing", "shutil", "tempfile", "ssl", "signal"})

GRPC = frozenset({
    "membrane.grpc_standard", "membrane.tls.grpc_credentials", "membrane.api.state_client",
    "membrane.ctl.observe", "membrane.agent.observing.grpc_serving", "membrane.operator.state_serving",
    "membrane.api.state.v1.state_pb2_grpc", "membrane.api.observer.v1.observer_pb2_grpc",  # generated
})
ADAPTERS: dict[str, frozenset[str]] = {
    "bcc": frozenset({"membrane.agent.datapath.loading"}),
    "pyroute2": frozenset({"membrane.agent.netlinking"}),
    "kubernetes": frozenset({
        # the operator's one door to the API (its own error types), and the agent's CSR client
        "membrane.operator.kube_client", "membrane.agent.cert_requesting",
        # test support: the API stand-in and the lab's cluster talk to an API server by design
        "membrane_testkit.kubeapi", "membrane_testkit.tls", "membrane_testkit.lab.cluster",
    }),
    "urllib3": frozenset({"membrane.operator.kube_client"}),  # transport errors, below the client
    "grpc": GRPC,
    "grpc_health": frozenset({"membrane.grpc_standard"}),
    "grpc_reflection": frozenset({"membrane.grpc_standard"}),
    "prometheus_client": frozenset({
        "membrane.agent.metrics", "membrane.agent.observing.metrics", "membrane.operator.metrics",
        "membrane.http_serving", "membrane.standard_metrics",
    }),
    "sqlite3": frozenset({"membrane.agent.state_db"}),
    "cryptography": frozenset({"membrane.tls.certificates"}),
    "scapy": frozenset({"membrane_testkit.lab.forging"}),
}
TEST_SUPPORT = frozenset({"membrane_testkit"})


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_graph_sees_every_folder_and_known_edges() -> None:
    """The contracts below are only as good as the graph: it maps agent/ and operator/ into the
    package and finds a known import in each folder."""
    graph = import_graph()
    assert "bcc" in graph["membrane.agent.datapath.loading"]
    assert "membrane.operator.state_log" in graph["membrane.operator.running"]
    assert "membrane.policy.rules" in graph["membrane.policy.cidrs"]
    assert within("membrane.agent.observing.events", {m for m in module_files() if m.startswith("membrane.agent.")})
    assert "kubernetes" in graph["membrane_testkit.lab.cluster"]
    assert "membrane_testkit.waiting" in graph["membrane_testkit.lab.node"]
    assert not any(within(m, TEST_SUPPORT) for m in import_graph(PRODUCT_FOLDERS))


def test_pure_core_imports_no_io_and_nothing_outside_the_core() -> None:
    bad = []
    for module, imported in sorted(import_graph().items()):
        if not within(module, CORE):
            continue
        for name in sorted(imported):
            top = _top(name)
            if top == "__future__" or (top != "membrane" and top in CORE_LIBRARIES):
                continue
            if top == "membrane":
                if not within(name, CORE) and name != "membrane":
                    bad.append(f"{module} imports {name} (outside the pure core)")
            elif top in IO_STDLIB:
                bad.append(f"{module} imports {name} (I/O belongs in an adapter)")
            elif top not in sys.stdlib_module_names:
                bad.append(f"{module} imports {name} (a library; the core may use {sorted(CORE_LIBRARIES)})")
    assert not bad, "pure core contract broken:\n" + "\n".join(bad)


def test_each_library_is_imported_by_its_adapters_only() -> None:
    bad = []
    for module, imported in sorted(import_graph().items()):
        for name in sorted(imported):
            allowed = ADAPTERS.get(_top(name))
            if allowed is not None and not within(module, allowed):
                bad.append(f"{module} imports {name}: only {sorted(allowed)} may")
    assert not bad, "adapter contract broken (move the call into the adapter, or list a new adapter):\n" + \
        "\n".join(bad)


def test_the_product_never_imports_the_test_kit() -> None:
    bad = [f"{module} imports {name}" for module, imported in sorted(import_graph(PRODUCT_FOLDERS).items())
           for name in sorted(imported) if within(name, TEST_SUPPORT)]
    assert not bad, "the shipped product imports test support:\n" + "\n".join(bad)
