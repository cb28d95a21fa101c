"""edgeloop operator GUI (PySide6) over the hub's ``Hub`` methods."""
