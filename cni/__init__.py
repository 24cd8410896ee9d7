"""CNI plugin."""
