"""Show whether this PySide6 leaks references to ``None`` from ``QTableWidget.setItem``.

PySide6-Essentials 6.12.0 drops one reference to ``None`` per ``setItem`` call; after a
few thousand cells Python aborts with ``Fatal Python error: none_dealloc``. Run
``.venv/bin/python scripts/qt_none_refcount.py``: exit status 1 means this install is broken.
"""

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
import PySide6
from PySide6.QtWidgets import QApplication, QTableWidget, QTableWidgetItem

app = QApplication.instance() or QApplication(sys.argv[:1])
table = QTableWidget(3, 4)


def fill() -> None:
    for r in range(table.rowCount()):
        for c in range(table.columnCount()):
            table.setItem(r, c, QTableWidgetItem(f"{r},{c}"))


fill()  # warm-up: the first fill settles one-off lazy initialisation inside Qt's bindings
before = sys.getrefcount(None)
for _ in range(200):  # 2,400 setItem calls: a clear drop on a broken install, not yet an abort
    fill()
after = sys.getrefcount(None)
print(f"PySide6 {PySide6.__version__}: refcount(None) before={before} after={after} drop={before - after}")
sys.stdout.flush()
# os._exit: on a broken install the interpreter's shutdown would itself deallocate None and abort.
os._exit(1 if after < before else 0)
