"""``keyface edit``: the desktop editor."""

from __future__ import annotations

import sys


def main(path: str | None = None, device: str = "cpu") -> int:
    from PyQt5.QtWidgets import QApplication

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    win = MainWindow(device)
    win.show()
    if path:
        win.open_path(path)
    return app.exec_()
