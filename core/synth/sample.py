"""Paired samples with ground truth, the parameters in every schema, and the documented pose sampler.

**Pose sampling** (:func:`sample_pose`), per sample:

* Head: yaw, pitch, roll are each 0 with probability 0.3, else normal with σ = 12°, 8°, 6° clipped to the rig range.
  Body: yaw/roll 0 with probability 0.6, else σ = 6°, 3°. Breathing 0 with probability 0.5, else uniform [0, 1].
* Expressions are neutral-heavy: a sample is fully neutral with probability 0.15; otherwise each expression *group*
  (eyes, brows, iris, mouth) is active with probability 0.45. An active group picks one of its actions (eyes: blink,
  eye smile, wide; brows: raise, lower, angle; mouth: open, wide, round, smile, frown — plus a second mouth action with
  probability 0.3; iris: gaze and size). Intensities are 1 with probability 0.35, else uniform (0, 1] (angles and
  gaze uniform [-1, 1]). Bilateral actions move both sides together with probability 0.7, else one side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..rig import character_schema, convert, get_schema, make_3dmm_converter
from . import face as fm
from .character import Character
from .render import MASK_PARTS, REST, Placement, Renderer

SCHEMAS = ("pose5", "tha45", "au17", "kp", "3dmm")
ENGINE_3DMM = f"3dmm:{fm.N_ID}x{fm.N_EXP}"
FACE_BOX_UNITS = 2.0          # keyface's face box is THA's head box: 2 × 2 units ...
FACE_BOX_CENTER = (0.0, 0.0)  # ... about the head's origin (512² THA frame: columns 192–320, rows 64–192)


def character_vector(values: dict) -> np.ndarray:
    names = character_schema().names
    return np.array([float(values.get(n, 0.0)) for n in names], np.float32)


def engine_3dmm_converter():
    """3DMM conditioning from the engine's own linear face model: α_exp = the expression channels (identity basis)."""
    return make_3dmm_converter(get_schema(ENGINE_3DMM), np.eye(fm.N_EXP))


def schema_params(char: Character, values: dict, neck_shift=(0.0, 0.0)) -> dict[str, np.ndarray]:
    """The pose in every generator schema. ``3dmm`` uses the engine's model (``3dmm:KxL``, α_id = the character's
    identity coefficients, α_exp = its expression channels); ``kp`` gets the engine's exact expression deltas of its 15
    canonical keypoints (head-box units: the box side is 1; :func:`keyface.core.rig.kp_expression_basis`)."""
    vec = character_vector(values)
    out = {name: convert(vec, "character", name).astype(np.float32) for name in ("pose5", "tha45", "au17")}
    kp_schema = get_schema("kp")
    kp = convert(vec, "character", "kp")  # expression deltas: the engine's exact keypoint motion
    names = kp_schema.names
    kp[names.index("tx")], kp[names.index("ty")] = neck_shift[0] / 2.0, neck_shift[1] / 2.0
    out["kp"] = kp.astype(np.float32)
    s3 = get_schema(ENGINE_3DMM)
    p3 = engine_3dmm_converter().to_schema(vec)
    for i, a in enumerate(char.alpha):
        p3[s3.names.index(f"id_{i:02d}")] = a
    p3[s3.names.index("tx")], p3[s3.names.index("ty")] = neck_shift[0] / 2.0, neck_shift[1] / 2.0
    out["3dmm"] = p3.astype(np.float32)
    return out


@dataclass
class Sample:
    """One ground-truth pair. Images are float32 RGBA (straight alpha, sRGB, [0, 1]); coordinates in pixels."""

    char_seed: int
    values: np.ndarray         # character-rig values (character schema order)
    rest: np.ndarray
    posed: np.ndarray
    flow: np.ndarray           # (H, W, 2) backward flow posed → rest: posed(p) ≈ rest(p + flow(p))
    visible: np.ndarray        # (H, W) bool: the posed pixel's content is visible at p + flow(p) in the rest image
    masks: np.ndarray          # (3, H, W) visible coverage of eyes, brows, mouth in the posed image
    rest_masks: np.ndarray
    face_box: tuple            # (x, y, w, h) of the posed face box (rest face box: ``rest_face_box``)
    rest_face_box: tuple
    vertices_rest: np.ndarray  # (N, 3) projected face mesh, rest pose (x, y, depth in pixels)
    vertices_posed: np.ndarray
    params: dict = field(default_factory=dict)


class PairRenderer:
    """Renders ground-truth pairs for one character at one size; the rest render is computed once."""

    def __init__(self, char: Character, size, placement: Placement | None = None):
        self.char = char
        self.renderer = Renderer(char, size, placement)
        self._rest = None

    @property
    def rest(self):
        if self._rest is None:
            self._rest = self.renderer.render(REST, gt=True)
        return self._rest

    def face_box(self, pose: fm.Pose) -> tuple[int, int, int, int]:
        r = self.renderer
        cx, cy = pose.head_forward(np.array(FACE_BOX_CENTER[0]), np.array(FACE_BOX_CENTER[1]),
                                   fm.head_depth(*FACE_BOX_CENTER))
        px, py = r.to_pixels(float(cx), float(cy))
        side = int(round(FACE_BOX_UNITS * r.unit))
        x0 = int(round(px + 0.5 - side / 2))
        y0 = int(round(py + 0.5 - side / 2))
        return x0, y0, side, side

    def vertices(self, values: dict, pose: fm.Pose) -> np.ndarray:
        mesh = fm.landmarks(self.char.alpha, values)
        posed = pose.project(mesh)
        r = self.renderer
        px, py = r.to_pixels(posed[:, 0], posed[:, 1])
        return np.stack([px, py, posed[:, 2] * r.unit], axis=1).astype(np.float32)

    def sample(self, values: dict) -> Sample:
        values = {**REST, **values}
        r = self.renderer
        rest, posed = self.rest, r.render(values, gt=True)
        pose = fm.Pose(values)
        h, w = posed.label.shape
        py, px = np.mgrid[0:h, 0:w].astype(np.float32)
        qx, qy = r.to_pixels(posed.rest_xy[..., 0], posed.rest_xy[..., 1])
        has = posed.label >= 0
        flow = np.where(has[..., None], np.stack([qx - px, qy - py], axis=-1), 0).astype(np.float32)
        qi = np.clip(np.rint(py + flow[..., 1]).astype(np.intp), 0, h - 1)
        qj = np.clip(np.rint(px + flow[..., 0]).astype(np.intp), 0, w - 1)
        same = rest.label[qi, qj] == posed.label
        opaque = (posed.top_alpha >= 0.99) & (rest.top_alpha[qi, qj] >= 0.99)
        visible = same & (opaque | ~has)
        neck = pose.neck[0] - fm.NECK[0], pose.neck[1] - fm.NECK[1]
        rest_pose = fm.Pose(dict(REST))
        return Sample(
            char_seed=self.char.seed, values=character_vector(values), rest=rest.image, posed=posed.image,
            flow=flow, visible=visible, masks=np.clip(posed.masks, 0, 1), rest_masks=np.clip(rest.masks, 0, 1),
            face_box=self.face_box(pose), rest_face_box=self.face_box(rest_pose),
            vertices_rest=self.vertices(values, rest_pose), vertices_posed=self.vertices(values, pose),
            params=schema_params(self.char, values, neck))


# -------------------------------------------------------------------------------------------------- pose sampling

_GROUPS = {
    "eyes": (("blink", True), ("eye_smile", True), ("eyes_wide", False)),
    "brows": (("brow_raise", True), ("brow_lower", True), ("brow_angle", True)),
    "mouth": (("mouth_open", False), ("mouth_wide", False), ("mouth_round", False), ("mouth_smile", False),
              ("mouth_frown", False)),
}


def sample_pose(rng: np.random.Generator) -> dict:
    """Character-rig values for one training sample (see the module docstring for the distribution)."""
    schema = character_schema()
    v = dict(REST)

    def angle(name, sigma, p_zero):
        if rng.random() >= p_zero:
            ch = schema.channel(name)
            v[name] = float(np.clip(rng.normal(0, sigma), ch.min, ch.max))

    angle("head_yaw", 12, 0.3)
    angle("head_pitch", 8, 0.3)
    angle("head_roll", 6, 0.3)
    angle("body_yaw", 6, 0.6)
    angle("body_roll", 3, 0.6)
    if rng.random() >= 0.5:
        v["breathing"] = float(rng.random())
    if rng.random() < 0.15:
        return v

    def intensity(signed=False):
        if signed:
            return float(rng.uniform(-1, 1))
        return 1.0 if rng.random() < 0.35 else float(rng.uniform(1e-3, 1))

    for group, actions in _GROUPS.items():
        if rng.random() >= 0.45:
            continue
        picks = [actions[rng.integers(len(actions))]]
        if group == "mouth" and rng.random() < 0.3:
            picks.append(actions[rng.integers(len(actions))])
        for base, bilateral in picks:
            signed = base == "brow_angle"
            if bilateral:
                x = intensity(signed)
                both = rng.random() < 0.7
                sides = ("left", "right") if both else (("left",) if rng.random() < 0.5 else ("right",))
                for s in sides:
                    v[f"{base}_{s}"] = x
            else:
                v[base] = intensity()
    if rng.random() < 0.45:
        v["iris_x"], v["iris_y"] = float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))
        if rng.random() < 0.3:
            v["iris_size"] = float(rng.uniform(-1, 1))
    return v


__all__ = ["MASK_PARTS", "SCHEMAS", "PairRenderer", "Sample", "sample_pose", "schema_params"]
