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


def render_clip(scene_path, out_dir, seed: int = 0, size: int = 256, framing: str = "full") -> int:
    """One character following a scene's keys (converted to the character rig), written as ``frame_00000.png`` … into
    ``out_dir`` (each atomically): a reference clip whose every frame has the engine's exact ground truth. Returns the
    number of frames."""
    from pathlib import Path

    from ..imageio import write_image
    from ..rig import character_schema, convert
    from ..scene import load_scene
    from .render import FRAMINGS, REST

    scene = load_scene(scene_path)
    frames = list(scene.frames)
    values = convert(scene.sample(frames), scene.schema, "character")
    names = character_schema().names
    renderer = Renderer(sample_character(seed), (size, size), FRAMINGS[framing])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f, v in zip(frames, values, strict=True):
        img = renderer.render({**REST, **dict(zip(names, (float(x) for x in v), strict=True))}).image
        write_image(out / f"frame_{f:05d}.png", quantise(np.clip(img, 0, 1)))
    return len(frames)
