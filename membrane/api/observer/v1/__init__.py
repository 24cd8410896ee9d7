"""Generated from proto/membrane/observer/v1/observer.proto by scripts/gen-observer-proto.sh: do not edit."""
