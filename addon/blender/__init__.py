"""keyface inside Blender: keyface parameters as Scene properties keyed on Blender's timeline, rendered through
keyface's pipeline into frames loaded in the Sequencer.

- ``bridge``: keys, per-frame values, the frames folder and the background render task; no ``bpy`` import.
- ``addon``: properties, panels (sidebar tab *keyface* in the Image Editor and the Sequencer), operators; imports
  ``bpy``.
- ``install``: ``keyface blender install / uninstall`` (the add-on shim in Blender's scripts folder, the Python
  environment's paths); no ``bpy`` import.
"""
