"""Test support for membrane: stand-ins for the outside world that speak its real protocols.

Nothing here is imported by the agent, the operator or the CNI plugin. `membrane.testing.kubeapi`
is an in-memory Kubernetes API server that the official `kubernetes` client talks to unmodified.
"""
