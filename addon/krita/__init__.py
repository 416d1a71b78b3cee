"""keyface inside Krita: a docker that animates the current painting into a new animated layer.

- ``adapter``: document ↔ keyface logic (pixels, face box from the selection, ranges, state in the ``.kra``, import of
  rendered frames) against the libkis calls it needs; no ``krita`` import.
- ``panel``: the docker's widget (the editor's model picker, parameter panel and timeline), given the Krita app.
- ``plugin``: the pykrita entry (Extension + DockWidgetFactory); the only module that imports ``krita``.
- ``install``: ``keyface krita install / uninstall`` (pykrita folder, kritarc, the Python environment's paths).
"""
