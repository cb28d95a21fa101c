"""A line plot drawn with QPainter: named series of (x, y) points, axes, a legend.

Used for learning curves (loss and accuracy per epoch, points added as epochs arrive)
and for sensor windows (one series per channel over the window's steps). The scale
is pure (:func:`nice_range`), so it is tested without a screen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

__all__ = ["PALETTE", "CurvePlot", "nice_range", "x_ticks"]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def x_ticks(x0: float, x1: float, steps: int, whole: bool) -> list[float]:
    """``steps + 1`` evenly spaced tick values from ``x0`` to ``x1``; with ``whole`` (an epoch axis) the
    distinct whole numbers nearest to them, so no tick reads 2.75 epochs."""
    ticks = [x0 + i / steps * (x1 - x0) for i in range(steps + 1)]
    return sorted({float(round(t)) for t in ticks if x0 <= round(t) <= x1}) if whole else ticks


def nice_range(values: Iterable[float]) -> tuple[float, float]:
    """``(lo, hi)`` covering ``values`` with a little margin; a flat or empty set gets a unit span."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-12:
        return lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


class CurvePlot(QWidget):
    """Named series of points; :meth:`add_point` appends (and repaints), :meth:`set_series` replaces."""

    def __init__(self, title: str = "", x_label: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.x_label = x_label
        self._series: dict[str, list[tuple[float, float]]] = {}
        self._colors: dict[str, str] = {}
        self.setMinimumSize(220, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(420, 240)

    # --- data ---------------------------------------------------------------------------
    def clear(self) -> None:
        self._series.clear()
        self._colors.clear()
        self.update()

    def add_point(self, name: str, x: float, y: float) -> None:
        self._points(name).append((float(x), float(y)))
        self.update()

    def set_series(self, name: str, ys: Sequence[float], xs: Sequence[float] | None = None) -> None:
        xs = list(xs) if xs is not None else list(range(len(ys)))
        self._points(name)[:] = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
        self.update()

    def series(self, name: str) -> list[tuple[float, float]]:
        """The points of one series (a copy); empty when there is none."""
        return list(self._series.get(name, []))

    def names(self) -> list[str]:
        return list(self._series)

    def _points(self, name: str) -> list[tuple[float, float]]:
        if name not in self._series:
            self._series[name] = []
            self._colors[name] = PALETTE[(len(self._colors)) % len(PALETTE)]
        return self._series[name]

    # --- drawing ------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("white"))
        fm = p.fontMetrics()
        left, top, right, bottom = fm.horizontalAdvance("-0.0000") + 8, fm.height() + 8, 10, fm.height() * 2 + 6
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        p.setPen(QColor("#222"))
        if self.title:
            p.drawText(QRectF(0, 2, self.width(), fm.height() + 4), Qt.AlignmentFlag.AlignHCenter, self.title)
        pts = [pt for s in self._series.values() for pt in s]
        xs = [x for x, _ in pts]
        x0, x1 = (min(xs), max(xs)) if xs and max(xs) > min(xs) else nice_range(xs)  # epochs: exact ends
        y0, y1 = nice_range(y for _, y in pts)
        p.setPen(QPen(QColor("#999"), 1))
        p.drawRect(plot)
        steps = 4 if plot.width() > 260 else 2
        for i in range(steps + 1):  # grid and tick labels
            fy = i / steps
            y = plot.bottom() - fy * plot.height()
            p.setPen(QPen(QColor("#eee"), 1))
            p.drawLine(QPointF(plot.left() + 1, y), QPointF(plot.right() - 1, y))
            p.setPen(QColor("#555"))
            p.drawText(QRectF(0, y - fm.height() / 2, left - 4, fm.height()), Qt.AlignmentFlag.AlignRight,
                       f"{y0 + fy * (y1 - y0):.3g}")
        whole = bool(xs) and all(float(x).is_integer() for x in xs)  # epochs: whole-number ticks only
        for xv in x_ticks(x0, x1, steps, whole):
            x = plot.left() + (xv - x0) / (x1 - x0) * plot.width()
            p.drawText(QRectF(x - 30, plot.bottom() + 2, 60, fm.height()), Qt.AlignmentFlag.AlignHCenter,
                       f"{xv:.3g}")
        if self.x_label:
            p.drawText(QRectF(plot.left(), plot.bottom() + fm.height() + 2, plot.width(), fm.height()),
                       Qt.AlignmentFlag.AlignHCenter, self.x_label)

        def at(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (y - y0) / (y1 - y0) * plot.height())

        legend_y = plot.top() + 4
        for name, points in self._series.items():
            color = QColor(self._colors[name])
            p.setPen(QPen(color, 2))
            if len(points) == 1:
                p.drawEllipse(at(*points[0]), 3, 3)
            elif points:
                path = QPainterPath(at(*points[0]))
                for x, y in points[1:]:
                    path.lineTo(at(x, y))
                p.drawPath(path)
            text_w = fm.horizontalAdvance(name) + 4
            p.drawLine(QPointF(plot.right() - text_w - 24, legend_y + fm.height() / 2),
                       QPointF(plot.right() - text_w - 6, legend_y + fm.height() / 2))
            p.setPen(QColor("#222"))
            p.drawText(QRectF(plot.right() - text_w - 2, legend_y, text_w, fm.height()), Qt.AlignmentFlag.AlignLeft,
                       name)
            legend_y += fm.height()
        if not pts:
            p.setPen(QColor("#888"))
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "no data yet")
        p.end()
