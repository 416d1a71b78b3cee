"""keyface.addon — host integrations. Host APIs (``krita``, ``bpy``) are imported only in ``addon/<host>/``."""
