"""Random character identities: geometry coefficients, palette and style choices, all from one integer seed and a
style family.

**Style families** (:data:`FAMILIES`) widen the engine's one drawing style so that generators can be validated on a
style they never saw (train on some families, hold whole families out). ``cel`` is the engine's original look and is
drawn exactly as before (same seed, same character); every other family first draws the ``cel`` character from the
seed, then re-draws what makes its style from an independent stream of the same seed: line weight and colour, cel
shadow strength, light gradient, paper/brush texture gain, palette (saturation, value) and, for the two proportion
families, the eye and face geometry. The render reads the style keys ``shadow``, ``gradient`` and ``texture_gain``
(1.0 = the ``cel`` look).
"""

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


# family → how it departs from "cel": ranges drawn uniformly (lo, hi); "line" picks the outline colour ("ink": near
# black, "hair": a darker hair colour, "soft": a light tint of the hair), "palette" rescales saturation and value of the
# hair, eyes, clothes and accents, "alpha" biases identity coefficients (face.IDENTITY) into a range
FAMILIES = {
    "cel": {},
    "soft": {"shadow": (0.25, 0.5), "gradient": (3.0, 5.0), "line_width": (0.45, 0.8), "line": "soft",
             "palette": ((0.45, 0.7), (1.05, 1.2))},
    "ink": {"shadow": (1.2, 1.4), "gradient": (0.0, 0.5), "line_width": (1.8, 2.6), "line": "ink",
            "lashes": (0.9, 1.0), "palette": ((1.0, 1.2), (0.85, 1.0))},
    "flat": {"shadow": (0.0, 0.0), "gradient": (0.0, 0.0), "texture_gain": (0.0, 0.0), "line_width": (0.15, 0.35),
             "line": "hair", "palette": ((1.1, 1.3), (1.0, 1.1))},
    "painterly": {"shadow": (0.5, 0.8), "gradient": (2.0, 4.0), "texture_gain": (3.0, 5.0), "line_width": (0.6, 1.0),
                  "line": "hair", "palette": ((0.55, 0.8), (0.85, 1.0))},
    "chibi": {"alpha": {"eye_size": (0.5, 1.0), "iris_size": (0.4, 1.0), "eye_aspect": (0.2, 1.0),
                        "chin_length": (-1.0, -0.5), "face_width": (0.3, 1.0)}},
    "mature": {"shadow": (0.6, 1.0), "line_width": (0.6, 1.0),
               "alpha": {"eye_size": (-1.0, -0.5), "iris_size": (-1.0, -0.4), "eye_aspect": (-1.0, -0.4),
                         "chin_length": (0.4, 1.0), "face_width": (-1.0, -0.3)}},
}
PALETTE_KEYS = ("hair", "eye_left", "eye_right", "cloth", "accent")


def _restyle(char: Character, family: str) -> Character:
    from .face import IDENTITY

    spec = FAMILIES[family]
    rng = np.random.default_rng([char.seed, 0x57F, sorted(FAMILIES).index(family)])
    style, colors, alpha = dict(char.style), dict(char.colors), char.alpha.copy()
    for key in ("shadow", "gradient", "texture_gain", "line_width", "lashes"):
        if key in spec:
            style[key] = float(rng.uniform(*spec[key]))
    if "palette" in spec:
        (s_lo, s_hi), (v_lo, v_hi) = spec["palette"]
        ks, kv = rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi)
        for key in PALETTE_KEYS:
            h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in colors[key]))
            colors[key] = _hsv(h, s * ks, v * kv)
    hair = colors["hair"]
    line = spec.get("line")
    if line == "ink":
        colors["line"] = np.array([0.06, 0.05, 0.07], np.float32) * rng.uniform(0.6, 1.4)
    elif line == "hair":
        colors["line"] = np.clip(hair * rng.uniform(0.3, 0.5), 0, 1).astype(np.float32)
    elif line == "soft":
        colors["line"] = np.clip(hair * 0.55 + 0.2, 0, 1).astype(np.float32)
    for key, (lo, hi) in spec.get("alpha", {}).items():
        alpha[IDENTITY.index(key)] = rng.uniform(lo, hi)
    style["family"] = family
    return Character(char.seed, alpha, colors, style)


def sample_character(seed: int, family: str = "cel") -> Character:
    """A character from its seed and style family (deterministic). Colours are sRGB in [0, 1]."""
    if family not in FAMILIES:
        raise ValueError(f"unknown style family {family!r} (one of {', '.join(FAMILIES)})")
    char = _sample_cel(seed)
    return char if family == "cel" else _restyle(char, family)


def character_of(spec) -> Character:
    """A character from a seed (``cel``) or a (seed, family) pair, as validation lists give them."""
    return sample_character(*spec) if isinstance(spec, (tuple, list)) else sample_character(int(spec))


def _sample_cel(seed: int) -> Character:
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
