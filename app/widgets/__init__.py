"""Small widgets of the operator window, drawn with QPainter (no chart library):
``curve`` (line plots: learning curves, sensor windows), ``matrix`` (confusion matrices),
``lineage`` (the lineage graph) and ``banner`` (errors shown in the window)."""
