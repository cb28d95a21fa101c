"""edgeloop operator GUI (PySide6) over the hub's ``Hub`` methods.

``window`` (the main window, ``run_app``), ``bridge`` (hub calls off the GUI thread,
results as signals), ``table_models`` (keyed rows updated in place), ``tasks`` (the task
runner: a pure function with a progress/cancel state, off the GUI thread or in a worker
process, results as signals), ``startup`` (can Qt open a window here?), ``views`` (one
module per view) and ``widgets`` (curve plot, confusion matrix, lineage graph, error
banner); ``python -m edgeloop.app`` starts it.
"""
