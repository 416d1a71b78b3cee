"""Generator methods, one folder per seed paper, each of the same shape: ``networks``, ``losses``, ``conditioning``,
``trainer`` (and the model registration in its ``__init__``)."""
