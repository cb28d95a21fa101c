"""Pieces the views share: a read-only table view over a :class:`KeyedTableModel`."""

from __future__ import annotations

from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from edgeloop.app.table_models import KeyedTableModel

__all__ = ["table_view"]


def table_view(model: KeyedTableModel, *, stretch_last: bool = False) -> QTableView:
    """Rows selected whole, no editing, no row numbers; columns fill the width (or the last one does)."""
    view = QTableView()
    view.setModel(model)
    header = view.horizontalHeader()
    if stretch_last:
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
    else:
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    view.verticalHeader().setVisible(False)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    return view
