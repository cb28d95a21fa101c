"""A confusion matrix drawn with QPainter: rows are true classes, columns predicted, cells
shaded by their share of the row."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QWidget

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix(QWidget):
    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.matrix: list[list[int]] = []
        self.labels: list[str] = []
        self.setMinimumSize(180, 160)

    def sizeHint(self) -> QSize:
        return QSize(260, 220)

    def set_matrix(self, matrix: Sequence[Sequence[int]] | None, labels: Sequence[str] = (), title: str = "") -> None:
        self.matrix = [[int(c) for c in row] for row in (matrix or [])]
        self.labels = [str(x) for x in labels] or [str(i) for i in range(len(self.matrix))]
        if title:
            self.title = title
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("white"))
        fm = p.fontMetrics()
        p.setPen(QColor("#222"))
        p.drawText(QRectF(0, 2, self.width(), fm.height() + 2), Qt.AlignmentFlag.AlignHCenter,
                   fm.elidedText(f"{self.title} (rows true, columns predicted)" if self.title else
                                 "confusion matrix (rows true, columns predicted)", Qt.TextElideMode.ElideRight,
                                 self.width() - 4))
        n = len(self.matrix)
        if n == 0:
            p.setPen(QColor("#888"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "no confusion matrix (regression, or none recorded)")
            p.end()
            return
        label_w = min(90, max(fm.horizontalAdvance(lab[:12]) for lab in self.labels) + 6)
        top = fm.height() * 2 + 6
        cell = max(12.0, min((self.width() - label_w - 8) / n, (self.height() - top - 4) / n))
        for c, lab in enumerate(self.labels[:n]):
            p.drawText(QRectF(label_w + c * cell, top - fm.height() - 2, cell, fm.height()),
                       Qt.AlignmentFlag.AlignHCenter, lab[:max(1, int(cell / 7))])
        for r, row in enumerate(self.matrix):
            total = sum(row) or 1
            p.setPen(QColor("#222"))
            p.drawText(QRectF(0, top + r * cell, label_w - 4, cell), Qt.AlignmentFlag.AlignRight
                       | Qt.AlignmentFlag.AlignVCenter, self.labels[r][:12] if r < len(self.labels) else str(r))
            for c, count in enumerate(row):
                share = count / total
                good = r == c
                base = QColor(31, 119, 180) if good else QColor(214, 39, 40)
                color = QColor(base.red(), base.green(), base.blue(), int(30 + 200 * share) if count else 0)
                rect = QRectF(label_w + c * cell, top + r * cell, cell - 1, cell - 1)
                p.fillRect(rect, color)
                p.setPen(QColor("#ccc"))
                p.drawRect(rect)
                p.setPen(QColor("white") if share > 0.6 else QColor("#222"))
                p.drawText(rect, Qt.AlignmentFlag.AlignCenter, str(count))
        p.end()
