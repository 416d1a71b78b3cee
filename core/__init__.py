"""keyface.core — the spine every front end calls: rig → timeline → generator → ResWarp → writer.

Nothing in this package imports a host API (``krita``, ``bpy``); those live only in ``keyface.addon.<host>``.
"""

__version__ = "0.1.0"
