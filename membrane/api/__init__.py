"""membrane's wire APIs: generated protobuf/gRPC code and the small pure types around it.

`state/v1/` is generated from `proto/membrane/state/v1/state.proto` by `scripts/gen-proto.sh`
(committed, so installs need no protoc). `state_objects` holds the pure form of what the state
stream carries, `state_codec` converts to and from protobuf, `state_client` is the gRPC client
agents use. Only `state_client` (and the generated `*_grpc` module) import `grpc`.
"""
