"""Certificates for the control plane's mutual TLS: the cluster CA, node certificates, CSRs
(`certificates`, the only module that imports `cryptography`), when to renew (`renewal`, pure)
and gRPC credentials from them (`grpc_credentials`, an adapter of grpc)."""
