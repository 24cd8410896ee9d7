"""The lab: nodes and pods made of network namespaces on this machine, for tests, the demo
and benchmarks. Everything it creates carries a prefix and is removed by `cleanup`."""
