"""Errors shown in the window: a red strip above the views with the message and a close button.

Every failure a view sees (a task's error signal, a refused input) goes to
:meth:`ErrorBanner.show_error`; nothing is left to a traceback on the console.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget

__all__ = ["ErrorBanner"]


class ErrorBanner(QFrame):
    """Hidden until :meth:`show_error`; :attr:`shown` keeps every message for tests and logs."""

    dismissed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.setStyleSheet("#errorBanner { background: #fdecea; border: 1px solid #e0a0a0; border-radius: 3px; }"
                           "#errorBanner QLabel { color: #7a1010; }")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss (Esc)")
        close.clicked.connect(self.dismiss)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(8, 4, 4, 4)
        lay.addWidget(self.label, 1)
        lay.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.shown: list[str] = []
        self.hide()

    def show_error(self, message: str, where: str = "") -> None:
        text = f"{where}: {message}" if where else message
        self.shown.append(text)
        self.label.setText(text)
        self.show()

    def dismiss(self) -> None:
        self.hide()
        self.dismissed.emit()

    @property
    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""
