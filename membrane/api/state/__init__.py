"""Generated code of the membrane.state API (see membrane/api/__init__.py)."""
