"""Table models for the operator window: rows of text keyed by a stable id, updated in place.

A :class:`KeyedTableModel` holds what a :class:`edgeloop.hub.views.Table` says (the same
text the CLI prints). :meth:`KeyedTableModel.set_table` brings it to a new table by key:
rows whose key is gone are removed, new keys are inserted, rows that moved are moved and
rows whose text changed emit ``dataChanged`` -- the model is never reset, so a view keeps
its selection and scroll position across refreshes and no cell object is recreated.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt

from edgeloop.hub.views import Table

_ROOT = QModelIndex()
_Index = QModelIndex | QPersistentModelIndex


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Ascending row numbers grouped into inclusive ``(first, last)`` runs of consecutive rows."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and out[-1][1] == r - 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return out


class KeyedTableModel(QAbstractTableModel):
    """Read-only rows of text, one per key, in the order of the last :meth:`set_table`."""

    def __init__(self, header: Sequence[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._header = list(header)
        self._keys: list[str] = []
        self._rows: list[list[str]] = []

    # --- what views ask ---------------------------------------------------------------
    def rowCount(self, parent: _Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._header)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> str | None:
        if role != Qt.ItemDataRole.DisplayRole or not index.isValid():
            return None
        return self._rows[index.row()][index.column()]

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> str | None:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self._header[section] if 0 <= section < len(self._header) else None
        return str(section + 1)

    # --- what the window and tests read -------------------------------------------------
    @property
    def header(self) -> list[str]:
        return list(self._header)

    def keys(self) -> list[str]:
        """The row keys, top to bottom."""
        return list(self._keys)

    def row_of(self, key: str) -> int | None:
        """The row showing ``key``, or None."""
        try:
            return self._keys.index(key)
        except ValueError:
            return None

    def text(self, row: int, column: int | str) -> str:
        """The text of one cell; ``column`` is a number or a header name."""
        col = self._header.index(column) if isinstance(column, str) else column
        return self._rows[row][col]

    # --- updating -----------------------------------------------------------------------
    def set_table(self, table: Table) -> None:
        """Show ``table`` (same columns), changing only the rows that differ, by key."""
        if len(table.header) != len(self._header):
            raise ValueError(f"this model shows {len(self._header)} columns ({', '.join(self._header)}), "
                             f"the table has {len(table.header)}; build a new model for other columns")
        if len(table.keys) != len(table.rows):
            raise ValueError(f"the table has {len(table.rows)} rows but {len(table.keys)} keys; "
                             "give every row a key")
        if len(set(table.keys)) != len(table.keys):
            raise ValueError("the table's row keys are not unique; key rows by an id such as the agent id")
        if table.header != self._header:
            self._header = list(table.header)
            self.headerDataChanged.emit(Qt.Orientation.Horizontal, 0, len(self._header) - 1)
        if table.keys == self._keys:  # the usual refresh: same rows, some text changed
            changed = [r for r, (old, new) in enumerate(zip(self._rows, table.rows, strict=True)) if old != new]
            for r in changed:
                self._rows[r] = list(table.rows[r])
        else:
            self._remove_missing(set(table.keys))
            changed = self._place(table.keys, table.rows)
        last = len(self._header) - 1
        for first_row, last_row in _runs(changed):
            self.dataChanged.emit(self.createIndex(first_row, 0), self.createIndex(last_row, last),
                                  [Qt.ItemDataRole.DisplayRole])

    def _remove_missing(self, wanted: set[str]) -> None:
        gone = [r for r, key in enumerate(self._keys) if key not in wanted]
        for first, last in reversed(_runs(gone)):  # bottom up: earlier row numbers stay valid
            self.beginRemoveRows(_ROOT, first, last)
            del self._keys[first:last + 1]
            del self._rows[first:last + 1]
            self.endRemoveRows()

    def _place(self, keys: list[str], rows: list[list[str]]) -> list[int]:
        """Insert and move rows so row i holds keys[i]; returns the rows whose text changed.

        Rows above i are final once i is reached (inserting or moving touches rows >= i
        only), so the returned row numbers are valid when this returns.
        """
        present = set(self._keys)
        changed: list[int] = []
        i = 0
        while i < len(keys):
            key = keys[i]
            if key not in present:  # a run of new keys goes in at once
                end = i + 1
                while end < len(keys) and keys[end] not in present:
                    end += 1
                self.beginInsertRows(_ROOT, i, end - 1)
                self._keys[i:i] = keys[i:end]
                self._rows[i:i] = [list(r) for r in rows[i:end]]
                self.endInsertRows()
                i = end
                continue
            if self._keys[i] != key:  # it is further down: move it up to row i
                j = self._keys.index(key, i + 1)
                self.beginMoveRows(_ROOT, j, j, _ROOT, i)
                self._keys.insert(i, self._keys.pop(j))
                self._rows.insert(i, self._rows.pop(j))
                self.endMoveRows()
            if self._rows[i] != rows[i]:
                self._rows[i] = list(rows[i])
                changed.append(i)
            i += 1
        return changed
