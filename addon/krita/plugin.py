"""The pykrita side: registers the keyface docker and a menu action. Loaded by the shim that ``keyface krita
install`` writes into Krita's pykrita folder, after it has made this Python environment importable."""

from __future__ import annotations

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

DOCKER_ID = "keyface_docker"
PANELS: list = []  # the live panels (one per main window), for the menu action and for scripted tests


class KeyfaceDocker(DockWidget):
    def __init__(self):
        super().__init__()
        from .panel import KeyfacePanel

        self.setWindowTitle("keyface")
        self.panel = KeyfacePanel(Krita.instance(), self)
        self.setWidget(self.panel)
        PANELS.append(self.panel)
        self.destroyed.connect(lambda *_: PANELS.remove(self.panel) if self.panel in PANELS else None)

    def canvasChanged(self, canvas):  # required by DockWidget; the panel polls the active document itself
        pass


class KeyfaceExtension(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        action = window.createAction("keyface_render", "Render keyface animation to new layer", "tools/scripts")
        action.triggered.connect(self._render)

    @staticmethod
    def _render():
        for panel in PANELS:
            if panel.isVisible():
                panel.render()
                return
        if PANELS:
            PANELS[0].render()


def register() -> None:
    app = Krita.instance()
    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, KeyfaceDocker))
    app.addExtension(KeyfaceExtension(app))
