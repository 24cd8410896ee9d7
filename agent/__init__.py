"""The membrane node agent."""
