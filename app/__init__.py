"""edgeloop operator GUI (PySide6) over the hub's ``Hub`` methods.

``window`` (the main window, ``run_app``), ``bridge`` (hub calls off the GUI thread,
results as signals), ``table_models`` (keyed rows updated in place); ``python -m
edgeloop.app`` starts it.
"""
