"""Contact sheet: characters at rest and in a fixed set of poses, on a light checkerless grey, for a person to judge."""

from __future__ import annotations

import numpy as np

from ..pixels import quantise
from .character import sample_character
from .render import Renderer

SHEET_POSES = (
    {"blink_left": 1, "blink_right": 1},
    {"eye_smile_left": 1, "eye_smile_right": 1, "mouth_smile": 1},
    {"mouth_open": 1, "eyes_wide": 1, "brow_raise_left": 1, "brow_raise_right": 1},
    {"mouth_round": 1, "iris_x": -1, "iris_y": 0.5},
    {"brow_angle_left": -1, "brow_angle_right": -1, "brow_lower_left": 1, "brow_lower_right": 1, "mouth_frown": 1},
    {"head_yaw": 25, "mouth_open": 0.5},
    {"head_yaw": -20, "head_pitch": 15, "blink_left": 1},
    {"head_roll": 12, "body_yaw": 12, "mouth_wide": 1, "breathing": 1},
)


def contact_sheet(seeds, size: int = 256, crop: float = 0.5) -> np.ndarray:
    """(rows·tile, 9·tile, 3) uint8: one row per character (rest, then :data:`SHEET_POSES`), each tile the upper part
    of the ``size``² render (the top ``crop`` fraction, centred)."""
    rows = []
    t = int(size * crop)
    x0 = (size - t) // 2
    for seed in seeds:
        r = Renderer(sample_character(seed), (size, size))
        tiles = []
        for values in ({},) + SHEET_POSES:
            im = r.render(values).image[:t, x0:x0 + t]
            a = im[..., 3:]
            tiles.append(im[..., :3] * a + 0.86 * (1 - a))
        rows.append(np.concatenate(tiles, axis=1))
    return quantise(np.concatenate(rows, axis=0))
