"""Generated from proto/membrane/state/v1/state.proto by scripts/gen-proto.sh: do not edit."""
