"""Generated code of the membrane.observer API (flows of one agent)."""
