"""Generator methods, one folder per seed paper. A folder declares itself with ``METHOD = Method(...)`` in its
``__init__.py`` (:class:`keyface.core.models.Method`) and is discovered by the registry; the README's "How to add a
generator" gives the recipe."""
