"""The engine's face model and 2.5D pose: the linear landmark mesh and the head/body transforms.

**Character space** (all geometry): x to the viewer's right, y down, the head box spans [-1, 1]² (the THA convention
places that box at x 192–320, y 64–192 of a 512² image, so one unit is 64 px there). The body hangs below (shoulders
near y = 2.3, the image bottom at y = 6 in the default placement).

**Face mesh.** Every facial feature the renderer draws is placed by a few *feature scalars* (eye centre, lid heights,
mouth corners, brow offsets…), each an affine function of the character's identity coefficients ``α_id``
(:data:`IDENTITY`, in [-1, 1]) and the expression channels ``e`` (:data:`keyface.core.rig.EXPRESSION_CHANNELS`). The
44 landmarks are affine in those scalars, so the mesh is exactly a linear 3DMM::

    X = X̄ + A_id · α_id + A_exp · e          (then pose: rotation about the head pivot, projection)

with ``X̄, A_id, A_exp`` from :func:`linear_model`. Depth (z, toward the viewer) is the mean face's, the same for every
identity and expression. Where the renderer clips a shape (an eyelid cannot close past the lower lid) the mesh is the
unclipped linear value.

**Pose** (2.5D): head parts carry a depth — a paraboloid head surface plus a per-part offset (nose in front, ears and
back hair behind) — and are rotated in 3D about the head pivot (yaw, then pitch) and projected orthographically, then
rolled in the image plane about the neck. The body turns (yaw, with its own depth profile), rolls about the hips and
breathes (shoulders rise, the chest widens); the head rides on the body's neck point. Every transform has an exact or
iterated inverse (fixed-point iterations, contracting because the depth profiles are gentle), used to render by
inverse mapping and to produce the ground-truth backward flow.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..rig import EXPRESSION_CHANNELS, character_schema

IDENTITY = ("face_width", "chin_length", "eye_spacing", "eye_height", "eye_size", "eye_aspect", "brow_height",
            "mouth_y", "mouth_width", "nose_y", "eye_tilt", "iris_size")
N_ID = len(IDENTITY)
N_EXP = len(EXPRESSION_CHANNELS)

HEAD_PIVOT_Y = 0.15    # the head turns about (0, 0.15) at depth HEAD_AXIS_Z
HEAD_AXIS_Z = -0.45
NECK = (0.0, 1.05)     # roll pivot of the head, carried by the body
BODY_PIVOT = (0.0, 7.0)
INVERSE_ITERATIONS = 6


def head_depth(x, y):
    """Depth of the head surface (paraboloid; 0.75 at the face centre)."""
    return 0.75 * (1 - (x / 1.4) ** 2 - ((y - 0.1) / 1.6) ** 2)


def body_depth(x):
    return 0.5 * (1 - (x / 2.6) ** 2)


# ------------------------------------------------------------------------------------------------- feature scalars


def features(alpha: np.ndarray, e: dict) -> dict:
    """Feature scalars (affine in α_id and the expression channels ``e``, a dict of floats or arrays)."""
    a = dict(zip(IDENTITY, alpha, strict=True))
    f = {}
    for side, s in (("left", 1), ("right", -1)):  # the character's left eye is on the image's right (x > 0)
        ex = s * (0.37 + 0.05 * a["eye_spacing"])
        ey = 0.22 + 0.05 * a["eye_height"]
        ew = 0.205 + 0.03 * a["eye_size"]
        hu = 0.20 + 0.025 * a["eye_size"] + 0.03 * a["eye_aspect"]
        hl = 0.11 + 0.012 * a["eye_size"] + 0.015 * a["eye_aspect"]
        blink, smile = e[f"blink_{side}"], e[f"eye_smile_{side}"]
        wide = e["eyes_wide"]
        f[f"eye_{side}"] = {
            "x": ex, "y": ey, "w": ew + 0.02 * wide, "tilt": 0.12 * a["eye_tilt"],
            # upper lid height above the centre (may go negative = below the centre when closing), lower lid depth
            "up": hu + 0.07 * wide - 0.30 * blink - 0.28 * smile,
            "lo": hl + 0.02 * wide - 0.10 * smile - 0.03 * blink,
            "arch": 0.11 * smile - 0.04 * blink,  # bend of a closed lid: ∩ for a smile, ∪ for a blink
            "iris_x": ex + 0.012 * s + 0.085 * e["iris_x"],
            "iris_y": ey + 0.015 - 0.055 * e["iris_y"],
            "iris_r": 0.125 + 0.015 * a["eye_size"] + 0.012 * a["iris_size"] + 0.03 * e["iris_size"],
        }
        up, down = e[f"brow_raise_{side}"], e[f"brow_lower_{side}"]
        f[f"brow_{side}"] = {
            "x": s * (0.37 + 0.05 * a["eye_spacing"]), "y": -0.13 + 0.05 * a["brow_height"] - 0.09 * up + 0.06 * down,
            "w": 0.19 + 0.02 * a["eye_size"], "angle": 0.30 * e[f"brow_angle_{side}"] - 0.12 * down,
            "side": s,
        }
    mw = 0.12 + 0.025 * a["mouth_width"]
    f["mouth"] = {
        "x": 0.0, "y": 0.64 + 0.05 * a["mouth_y"],
        "w": mw + 0.05 * e["mouth_wide"] - 0.04 * e["mouth_round"] + 0.01 * e["mouth_smile"],
        "up": 0.035 * e["mouth_open"] + 0.025 * e["mouth_round"],   # upper lip rise at the centre
        "lo": 0.20 * e["mouth_open"] + 0.06 * e["mouth_round"] + 0.02 * e["mouth_wide"],  # lower lip (jaw) drop
        "corner": -0.055 * e["mouth_smile"] + 0.045 * e["mouth_frown"],  # corner offset (< 0 = up)
        "jaw": 0.11 * e["mouth_open"] + 0.03 * e["mouth_round"],
    }
    f["nose"] = {"x": 0.0, "y": 0.45 + 0.04 * a["nose_y"]}
    f["face"] = {"width": 0.86 + 0.06 * a["face_width"], "chin": 0.98 + 0.06 * a["chin_length"]}
    return f


# ------------------------------------------------------------------------------------------------------ landmarks

FACE_CENTER_Y = -0.05


def face_radius(phi, width, chin):
    """Face outline in polar form about (0, FACE_CENTER_Y) (φ from +x, y down): affine in width and chin, so the
    contour landmarks are linear. Upper half: a rounded cranium 0.92 tall; lower half: cheeks tapering to a chin at
    y = chin."""
    c2 = np.cos(phi) ** 2
    s = np.sin(phi)
    lower = np.maximum(s, 0)
    upper = np.maximum(-s, 0)
    return (width * c2 * (1 - 0.35 * lower ** 2) + 0.92 * upper ** 2 + 0.5 * lower ** 2 * (1 - lower ** 4)
            + (chin - FACE_CENTER_Y) * lower ** 6)

_U = (-1.0, -0.5, 0.0, 0.5, 1.0)
LANDMARK_NAMES: list[str] = (
    [f"contour_{i}" for i in range(9)] + [f"brow_{s}_{i}" for s in ("right", "left") for i in range(5)]
    + ["nose_bridge", "nose_tip", "nose_base"]
    + [f"eye_{s}_{k}" for s in ("right", "left") for k in ("outer", "up_1", "up_2", "inner", "lo_1", "lo_2")]
    + ["iris_right", "iris_left"]
    + ["mouth_corner_right", "mouth_up_1", "mouth_up_mid", "mouth_up_2", "mouth_corner_left", "mouth_lo_2",
       "mouth_lo_mid", "mouth_lo_1"])
N_LANDMARKS = len(LANDMARK_NAMES)
CONTOUR_ANGLES = np.linspace(math.radians(-10), math.radians(190), 9)
# 15 of them are the canonical keypoints of the ``kp`` schema (seed 003's K = 15), chosen so that every expression
# that moves a landmark moves a keypoint: two rigid anchors (cheek, nose tip), the gaze (right iris), each brow's two
# ends (raise, lower, angle), each eye's upper and lower lid (blink, eye smile, wide), and the mouth's corners and
# lip middles (open, wide, round, smile, frown). Their deltas span 14 of the 19 expression directions; iris size moves
# no landmark, and opposite channels (raise/lower, smile/frown, …) share a direction.
KP_LANDMARKS = ("contour_0", "nose_tip", "iris_right", "brow_right_0", "brow_right_4", "brow_left_0", "brow_left_4",
                "eye_right_up_1", "eye_right_lo_1", "eye_left_up_1", "eye_left_lo_1", "mouth_corner_right",
                "mouth_corner_left", "mouth_up_mid", "mouth_lo_mid")


def _landmarks_2d(f: dict) -> list[tuple]:
    """(x, y) of every landmark from the feature scalars: affine in them (fixed fractions along each feature)."""
    pts = []
    face = f["face"]
    for t in CONTOUR_ANGLES:  # the lower face outline: cheeks to chin (jaw drop lowers the chin)
        r = face_radius(t, face["width"], face["chin"] + f["mouth"]["jaw"])
        pts.append((r * math.cos(t), FACE_CENTER_Y + r * math.sin(t)))
    for side in ("right", "left"):
        b = f[f"brow_{side}"]
        for u in _U:
            pts.append((b["x"] + u * 0.19, b["y"] - 0.045 * (1 - u * u) - b["angle"] * 0.19 * u * (-b["side"])))
    n = f["nose"]
    pts += [(n["x"], n["y"] - 0.15), (n["x"], n["y"]), (n["x"], n["y"] + 0.04)]
    for side in ("right", "left"):
        e = f[f"eye_{side}"]
        s = 1 if side == "left" else -1
        outer, inner = e["x"] + s * e["w"], e["x"] - s * e["w"]
        tilt = e["tilt"] * 0.205
        up = e["y"] - 0.75 * e["up"] - 0.75 * e["arch"]
        lo = e["y"] + 0.8 * e["lo"]
        pts += [(outer, e["y"] - tilt), (e["x"] + s * 0.1025, up - 0.5 * tilt), (e["x"] - s * 0.1025, up + 0.5 * tilt),
                (inner, e["y"] + tilt), (e["x"] - s * 0.1025, lo + 0.5 * tilt), (e["x"] + s * 0.1025, lo - 0.5 * tilt)]
    pts += [(f["eye_right"]["iris_x"], f["eye_right"]["iris_y"]), (f["eye_left"]["iris_x"], f["eye_left"]["iris_y"])]
    m = f["mouth"]
    cy = m["y"] + m["corner"]
    pts += [(m["x"] - m["w"], cy), (m["x"] - 0.5 * 0.13, m["y"] + 0.25 * m["corner"] - 0.75 * m["up"]),
            (m["x"], m["y"] - m["up"]), (m["x"] + 0.5 * 0.13, m["y"] + 0.25 * m["corner"] - 0.75 * m["up"]),
            (m["x"] + m["w"], cy), (m["x"] + 0.5 * 0.13, m["y"] + 0.25 * m["corner"] + 0.75 * m["lo"]),
            (m["x"], m["y"] + m["lo"]), (m["x"] - 0.5 * 0.13, m["y"] + 0.25 * m["corner"] + 0.75 * m["lo"])]
    return pts


_DEPTH_OFFSET = {"nose_tip": 0.22, "nose_base": 0.12, "nose_bridge": 0.08}


def landmarks(alpha, e: dict) -> np.ndarray:
    """(N_LANDMARKS, 3) rest-pose mesh in character units (z from the mean face)."""
    xy = np.array(_landmarks_2d(features(np.asarray(alpha, np.float64), e)), np.float64)
    return np.concatenate([xy, _MEAN_DEPTH[:, None]], axis=1)


def _mean_depth() -> np.ndarray:
    zero = {n: 0.0 for n in character_schema().names}
    xy = np.array(_landmarks_2d(features(np.zeros(N_ID), zero)), np.float64)
    z = head_depth(xy[:, 0], xy[:, 1])
    return z + np.array([_DEPTH_OFFSET.get(n, 0.0) for n in LANDMARK_NAMES])


_MEAN_DEPTH = _mean_depth()


@functools.lru_cache(maxsize=1)
def linear_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X̄ (N, 3), A_id (N, 3, K), A_exp (N, 3, L)): the mesh is exactly X̄ + A_id α_id + A_exp e."""
    zero = {n: 0.0 for n in character_schema().names}
    mean = landmarks(np.zeros(N_ID), zero)
    a_id = np.stack([landmarks(np.eye(N_ID)[k], zero) - mean for k in range(N_ID)], axis=-1)
    a_exp = np.stack([landmarks(np.zeros(N_ID), {**zero, name: 1.0}) - mean for name in EXPRESSION_CHANNELS],
                     axis=-1)
    return mean, a_id, a_exp


# -------------------------------------------------------------------------------------------------------- the pose


def _rot(x, y, angle):
    c, s = math.cos(angle), math.sin(angle)
    return c * x - s * y, s * x + c * y


def _unstretch(y, y0, y1, shift):
    """Inverse of y ↦ y + shift·ramp(y) with ramp rising linearly from 0 at y0 to 1 at y1 (shift may be < 0)."""
    span = y1 - y0
    mid = y0 + (y - y0) / (1 + shift / span)
    return np.where(y <= y0, y, np.where(y >= y1 + shift, y - shift, mid))


@dataclass
class Pose:
    """Derived transforms for one set of character-rig values (a dict name → float)."""

    values: dict

    def __post_init__(self):
        v = self.values
        self.yaw, self.pitch = math.radians(v["head_yaw"]), math.radians(v["head_pitch"])
        self.roll = math.radians(v["head_roll"])
        self.body_yaw, self.body_roll = math.radians(v["body_yaw"]), math.radians(v["body_roll"])
        self.breath = float(v["breathing"])
        nx, ny = self.body_forward(np.array(NECK[0]), np.array(NECK[1]))
        self.neck = (float(nx), float(ny))

    # body ------------------------------------------------------------------------------------------------------
    def body_forward(self, x, y):
        x1 = x * math.cos(self.body_yaw) + body_depth(x) * math.sin(self.body_yaw)
        y1 = y - 0.06 * self.breath * np.clip((4.2 - y) / 2.5, 0, 1)
        x1 = x1 * (1 + 0.015 * self.breath)
        rx, ry = _rot(x1 - BODY_PIVOT[0], y1 - BODY_PIVOT[1], self.body_roll)
        return rx + BODY_PIVOT[0], ry + BODY_PIVOT[1]

    def body_inverse(self, x, y):
        x1, y1 = _rot(x - BODY_PIVOT[0], y - BODY_PIVOT[1], -self.body_roll)
        x1, y1 = x1 + BODY_PIVOT[0], y1 + BODY_PIVOT[1]
        x1 = x1 / (1 + 0.015 * self.breath)
        # y1 = y + shift·ramp, ramp = clip((4.2 - y)/2.5): rising toward smaller y; flip to use _unstretch
        shift = -0.06 * self.breath
        yy = -_unstretch(-y1, -4.2, -1.7, -shift)
        c, s = math.cos(self.body_yaw), math.sin(self.body_yaw)
        xx = x1
        if s:
            for _ in range(INVERSE_ITERATIONS):
                xx = (x1 - body_depth(xx) * s) / c
        return xx, yy

    # head ------------------------------------------------------------------------------------------------------
    def head_forward(self, x, y, z):
        """Rest head point (x, y) at depth z → image (character units)."""
        cy, sy, cp, sp = math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch), math.sin(self.pitch)
        zz = z - HEAD_AXIS_Z
        xa, za = x * cy + zz * sy, -x * sy + zz * cy
        yb = (y - HEAD_PIVOT_Y) * cp - za * sp
        x1, y1 = xa, yb + HEAD_PIVOT_Y
        return self._head_rigid(x1, y1)

    def _head_rigid(self, x1, y1):
        rx, ry = _rot(x1 - NECK[0], y1 - NECK[1], self.roll + self.body_roll)
        return rx + self.neck[0], ry + self.neck[1]

    def head_inverse(self, x, y, depth_offset: float):
        """Image point → rest head point of a part at ``depth_offset`` from the head surface."""
        x1, y1 = _rot(x - self.neck[0], y - self.neck[1], -(self.roll + self.body_roll))
        x1, y1 = x1 + NECK[0], y1 + NECK[1]
        cy, sy, cp, sp = math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch), math.sin(self.pitch)
        if not sy and not sp:
            return x1, y1
        xx, yy = x1, y1
        for _ in range(INVERSE_ITERATIONS):
            zz = head_depth(xx, yy) + depth_offset - HEAD_AXIS_Z
            xx = (x1 - zz * sy) / cy
            yy = HEAD_PIVOT_Y + ((y1 - HEAD_PIVOT_Y) + (-xx * sy + zz * cy) * sp) / cp
        return xx, yy

    def project(self, points: np.ndarray) -> np.ndarray:
        """Rest mesh (N, 3) → posed (N, 3) in character units (z rotated as well)."""
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        px, py = self.head_forward(x, y, z)
        cy, sy, cp, sp = math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch), math.sin(self.pitch)
        zz = z - HEAD_AXIS_Z
        za = -x * sy + zz * cy
        pz = (y - HEAD_PIVOT_Y) * sp + za * cp + HEAD_AXIS_Z
        return np.stack([px, py, pz], axis=1)
