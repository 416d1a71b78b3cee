"""ATW's driving signal (seed 004 §3.2): the 17 OpenFace action units (``au17``) as intensity / 5, a vector tiled over
the image and concatenated to it. Expression categories (the paper's other driving form) are not shipped: our corpus
is labelled with continuous AUs, which is what keyframed animation needs.

Training targets are rendered from poses the au17 converter represents exactly (``keyface synth --poses expression
--project au17``: bilateral, no gaze, head and body at rest), so the driving vector determines the target image.
"""

from __future__ import annotations

import numpy as np

from ...rig import convert, get_schema

SCHEMA = "au17"
DIM = len(get_schema(SCHEMA))


def driving(values_character) -> np.ndarray:
    """Character-rig values (..., 25) → the network's driving vector (..., 17), AU intensity / 5."""
    return get_schema(SCHEMA).to_network(convert(values_character, "character", SCHEMA)).astype(np.float32)


def driving_from_schema(values_au17) -> np.ndarray:
    """au17 values (..., 17), as in a scene's tracks → the driving vector."""
    return get_schema(SCHEMA).to_network(values_au17).astype(np.float32)
