"""Style mapping (seed 003): 3D keypoints, pose–expression network, warping network and intermediate generator.

Work in progress: the networks (:mod:`.networks`) are written and tested; no model is trained or shipped yet, so this
method offers no model and no command (nothing appears in ``keyface models`` or the CLI). Importing this package
does not import torch."""

from __future__ import annotations

from ...models import Method

METHOD = Method("stylemap", "Style mapping: keypoints, pose–expression and warping networks (seed 003)")
