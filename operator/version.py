"""Operator placeholder: cluster control plane (Kubernetes mode, see issue 5)."""
