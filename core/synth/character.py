"""Random character identities: geometry coefficients, palette and style choices, all from one integer seed."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from .face import N_ID

HAIR_STYLES = ("short", "bob", "long", "twintails", "ponytail")
NECKLINES = ("round", "vee", "sailor")


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


@dataclass
class Character:
    seed: int
    alpha: np.ndarray                     # identity coefficients (face.IDENTITY), each in [-1, 1]
    colors: dict = field(default_factory=dict)
    style: dict = field(default_factory=dict)


def sample_character(seed: int) -> Character:
    """A character from its seed (deterministic). Colours are sRGB in [0, 1]."""
    rng = np.random.default_rng([int(seed), 0x6B66])
    alpha = rng.uniform(-1, 1, N_ID).astype(np.float64)
    skin_tone = rng.choice([0, 0, 0, 1, 1, 2, 3])
    skin = [_hsv(0.07, 0.16, 1.0), _hsv(0.06, 0.24, 0.98), _hsv(0.07, 0.35, 0.86), _hsv(0.07, 0.45, 0.62)][skin_tone]
    hair_h = rng.random()
    kind = rng.random()
    if kind < 0.25:    # natural: black / brown / blond
        hair = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.7), rng.choice([0.2, 0.45, 0.9]))
    elif kind < 0.35:  # silver / white
        hair = _hsv(hair_h, 0.08, rng.uniform(0.8, 0.95))
    else:              # anime colours
        hair = _hsv(hair_h, rng.uniform(0.35, 0.85), rng.uniform(0.45, 0.95))
    eye = _hsv(rng.random(), rng.uniform(0.5, 0.95), rng.uniform(0.45, 0.9))
    eye2 = eye if rng.random() > 0.06 else _hsv(rng.random(), 0.8, 0.8)  # rare heterochromia
    cloth = _hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.95))
    accent = _hsv(rng.random(), rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95))
    colors = {
        "skin": skin, "hair": hair, "eye_left": eye, "eye_right": eye2, "cloth": cloth, "accent": accent,
        "cloth2": _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.85, 1.0)),
        "line": np.clip(hair * 0.35, 0, 1) if rng.random() < 0.7 else np.array([0.12, 0.1, 0.12], np.float32),
        "mouth": _hsv(0.98, 0.55, 0.55), "blush": _hsv(0.98, 0.5, 1.0),
    }
    style = {
        "hair": str(rng.choice(HAIR_STYLES)),
        "bangs": int(rng.integers(5, 10)),           # fringe strands
        "bang_length": float(rng.uniform(0.0, 0.22)),  # how far the fringe reaches down
        "bang_sharp": float(rng.uniform(0.4, 1.0)),  # pointed (1) or rounded (0) tips
        "bang_phase": float(rng.uniform(-0.5, 0.5)),
        "hair_volume": float(rng.uniform(1.05, 1.2)),
        "hair_length": float(rng.uniform(1.5, 4.5)),
        "side_locks": bool(rng.random() < 0.7),
        "ahoge": bool(rng.random() < 0.35),
        "strands": int(rng.integers(14, 26)),
        "strand_seed": float(rng.uniform(0, 6.28)),
        "neckline": str(rng.choice(NECKLINES)),
        "shoulders": float(rng.uniform(1.45, 1.75)),
        "ribbon": bool(rng.random() < 0.45),
        "hairpin": bool(rng.random() < 0.35),
        "glasses": bool(rng.random() < 0.15),
        "blush": float(rng.uniform(0.0, 0.35)),
        "lashes": float(rng.uniform(0.5, 1.0)),
        "line_width": float(rng.uniform(0.7, 1.3)),
        "texture": [float(v) for v in rng.uniform(0, 6.28, 8)],
        "light": float(rng.uniform(-0.6, 0.6)),      # light direction (x)
    }
    return Character(int(seed), alpha, colors, style)
