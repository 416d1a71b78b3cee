"""F³A-GAN's geometry (seed 002, §III-A) on keyface's own linear face model: parameters, the posed mesh, the facial
flow, the landmark heatmap, and the 2D backward flow ResWarp gets.

**The 3DMM** is the engine's (:mod:`keyface.core.synth.face`): 44 landmark vertices, X = X̄ + A_id·α_id + A_exp·α_exp
with K = 12 identity and L = 19 expression coefficients (α_exp is exactly the character rig's expression channels), so
the model's schema is ``3dmm:12x19``. Eq. (1)'s ``s·R·X + t`` is the engine's head pose (yaw, then pitch about the
head pivot, then roll about the neck; :class:`keyface.core.synth.face.Pose` with the body at rest), translated by
``2·t`` character units (``tx, ty`` are in face-box units: the box side is 1) and scaled by ``s`` about the crop's
nominal face centre. ``tz`` is unused (orthographic projection).

**The crop** (the generator's grid, ``g``²) frames the head like ``keyface synth --framing head``: the face box (2 × 2
character units) is g/2 px wide, its centre at (0.5·g, 0.45·g); one character unit is g/4 px.

**Facial flow** (§III-A-1): Δ = X_t − X_s for every vertex (the paper stores X_s − X_t; we store where each source
point goes, the sign of keyface's other motion fields — a sign is a convention the network learns either way),
divided by the face box side in pixels, z-buffered onto the image plane at the *source* vertices' positions with the
nearer point winning (the engine's z points toward the viewer: larger z is visible, as the paper keeps the larger
depth). The paper's mesh is dense (BFM); ours has 44 vertices, so each triangle of a fixed triangulation is
rasterised with barycentric interpolation of Δ and of depth (the paper's per-point splat would leave holes).

**ResWarp's flow** (backward, target pixel → source pixel) inverts that forward motion: the *target* mesh is
rasterised, each covered pixel takes the barycentric combination of its triangle's *source* vertex positions, and the
flow is that position minus the pixel. It is defined only where the target mesh covers the pixel (the face from the
brows to the chin) and is exact per triangle (the motion is affine inside a triangle); elsewhere it is undefined and
we give ResWarp the rigid head motion of the same pose change, faded out with the distance from the face
(:func:`backward_flow`): hair and ears follow the head, the background far from it does not move.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ...box import HEAD_FACE_CENTER
from ...errors import KeyfaceError
from ...synth import face as fm

K, L = fm.N_ID, fm.N_EXP
SCHEMA = f"3dmm:{K}x{L}"
N_PARAMS = K + L + 3 + 3 + 1  # schema order: id_00…, exp_00…, pitch, yaw, roll, tx, ty, tz, scale
SL_ID, SL_EXP, SL_ANG, SL_T = slice(0, K), slice(K, K + L), slice(K + L, K + L + 3), slice(K + L + 3, K + L + 5)
I_SCALE = N_PARAMS - 1
ANGLE_ORDER = ("pitch", "yaw", "roll")
FACE_CENTER = HEAD_FACE_CENTER  # the face box centre in the crop, as fractions of its side (synth's head framing)
# feature groups weighted by L_lm (Eq. 5) and boxed for L_wp (Eq. 10): eyes (with irises), nose, mouth
PARTS = {
    "eyes": [i for i, n in enumerate(fm.LANDMARK_NAMES) if n.startswith(("eye_", "iris_"))],
    "nose": [i for i, n in enumerate(fm.LANDMARK_NAMES) if n.startswith("nose_")],
    "mouth": [i for i, n in enumerate(fm.LANDMARK_NAMES) if n.startswith("mouth_")],
}


def unit(grid: int) -> float:
    """Pixels per character unit in a crop of side ``grid``."""
    return grid / 4.0


def origin(grid: int) -> tuple[float, float]:
    """Pixel coordinates of the character origin (the face box centre) in the crop (pixel centres at integers)."""
    return FACE_CENTER[0] * grid - 0.5, FACE_CENTER[1] * grid - 0.5


@functools.lru_cache(maxsize=1)
def basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X̄ (N, 3), A_id (N, 3, K), A_exp (N, 3, L)) of the engine's face model, float32."""
    mean, a_id, a_exp = fm.linear_model()
    return mean.astype(np.float32), a_id.astype(np.float32), a_exp.astype(np.float32)


@functools.lru_cache(maxsize=1)
def triangles() -> np.ndarray:
    """(T, 3) vertex indices: a Delaunay triangulation of the mean face with the mouth open and the eyes wide (so the
    lips and lids, which coincide at rest, are separate vertices of separate triangles); fixed for every face."""
    from scipy.spatial import Delaunay

    from ...rig import EXPRESSION_CHANNELS

    mean, _, a_exp = basis()
    e = np.zeros(L, np.float32)
    e[EXPRESSION_CHANNELS.index("mouth_open")] = 1.0
    e[EXPRESSION_CHANNELS.index("eyes_wide")] = 1.0
    tri = Delaunay((mean + a_exp @ e)[:, :2]).simplices
    return np.ascontiguousarray(tri, dtype=np.int64)


# ------------------------------------------------------------------------------------------ the mesh (torch, batched)


def shape(params, torch_mod=None):
    """(B, N_PARAMS) parameters → (B, N, 3) rest-pose mesh in character units (torch or numpy in, same out)."""
    import torch

    p = torch.as_tensor(params, dtype=torch.float32)
    mean, a_id, a_exp = (torch.from_numpy(a).to(p.device) for a in basis())
    return mean + torch.einsum("njk,bk->bnj", a_id, p[:, SL_ID]) + torch.einsum("njl,bl->bnj", a_exp, p[:, SL_EXP])


def project(params, grid: int):
    """(B, N_PARAMS) parameters → (B, N, 3) mesh in crop pixels (x, y; depth z in pixels, toward the viewer).
    Differentiable (torch); the head transform is the engine's :meth:`keyface.core.synth.face.Pose.project` with the
    body at rest (``tests/test_f3a.py`` checks they agree)."""
    import torch

    p = torch.as_tensor(params, dtype=torch.float32)
    x = shape(p)
    ang = torch.deg2rad(p[:, SL_ANG])
    pitch, yaw, roll = ang[:, 0:1], ang[:, 1:2], ang[:, 2:3]
    cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)
    zz = x[..., 2] - fm.HEAD_AXIS_Z
    xa = x[..., 0] * cy + zz * sy
    za = -x[..., 0] * sy + zz * cy
    y1 = (x[..., 1] - fm.HEAD_PIVOT_Y) * cp - za * sp + fm.HEAD_PIVOT_Y
    pz = (x[..., 1] - fm.HEAD_PIVOT_Y) * sp + za * cp + fm.HEAD_AXIS_Z
    cr, sr = torch.cos(roll), torch.sin(roll)
    dx, dy = xa - fm.NECK[0], y1 - fm.NECK[1]
    px = cr * dx - sr * dy + fm.NECK[0] + 2 * p[:, SL_T][:, 0:1]
    py = sr * dx + cr * dy + fm.NECK[1] + 2 * p[:, SL_T][:, 1:2]
    s = p[:, I_SCALE:I_SCALE + 1] * unit(grid)
    ox, oy = origin(grid)
    return torch.stack([px * s + ox, py * s + oy, pz * s], dim=-1)


def project_np(params: np.ndarray, grid: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        return project(np.asarray(params, np.float32).reshape(-1, N_PARAMS), grid).numpy()


def neutral_params(batch: int = 1) -> np.ndarray:
    p = np.zeros((batch, N_PARAMS), np.float32)
    p[:, I_SCALE] = 1.0
    return p


def target_params(source: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The keyed face from a source fit: the schema values are *offsets* from the source's own face (0 = unchanged;
    ``scale`` multiplies, its rest value 1), so a scene's rest pose is the source exactly and keys mean the same on
    every character (e.g. ``exp`` of mouth_open = 1 opens any mouth by the same amount)."""
    source = np.asarray(source, np.float32).reshape(-1, N_PARAMS)
    keys = np.asarray(keys, np.float32).reshape(-1, N_PARAMS)
    out = source + keys
    out[:, I_SCALE] = source[:, I_SCALE] * keys[:, I_SCALE]
    out[:, K + L + 5] = 0.0  # tz: orthographic
    return out


# ------------------------------------------------------------------------------------------------ rasterisation


def rasterize(verts: np.ndarray, attrs: np.ndarray, size: int, tris=None) -> tuple[np.ndarray, np.ndarray]:
    """Triangles (default: the fixed triangulation), vertices (N, 3) in pixels (x, y, depth), barycentric
    interpolation of ``attrs`` (N, C) at pixel centres, z-buffered (larger depth wins). Returns ((size, size, C) map,
    0 where no triangle covers the pixel; (size, size) bool coverage)."""
    attrs = np.asarray(attrs, np.float32)
    out = np.zeros((size, size, attrs.shape[1]), np.float32)
    zbuf = np.full((size, size), -np.inf, np.float32)
    for a, b, c in (triangles() if tris is None else tris):
        pa, pb, pc = verts[a], verts[b], verts[c]
        x0 = max(int(math.floor(min(pa[0], pb[0], pc[0]))), 0)
        x1 = min(int(math.ceil(max(pa[0], pb[0], pc[0]))), size - 1)
        y0 = max(int(math.floor(min(pa[1], pb[1], pc[1]))), 0)
        y1 = min(int(math.ceil(max(pa[1], pb[1], pc[1]))), size - 1)
        if x0 > x1 or y0 > y1:
            continue
        det = (pb[1] - pc[1]) * (pa[0] - pc[0]) + (pc[0] - pb[0]) * (pa[1] - pc[1])
        if abs(det) < 1e-9:  # degenerate (e.g. closed lips): covers nothing
            continue
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1].astype(np.float32)
        wa = ((pb[1] - pc[1]) * (xs - pc[0]) + (pc[0] - pb[0]) * (ys - pc[1])) / det
        wb = ((pc[1] - pa[1]) * (xs - pc[0]) + (pa[0] - pc[0]) * (ys - pc[1])) / det
        wc = 1 - wa - wb
        inside = (wa >= -1e-6) & (wb >= -1e-6) & (wc >= -1e-6)
        z = wa * pa[2] + wb * pb[2] + wc * pc[2]
        sub = zbuf[y0:y1 + 1, x0:x1 + 1]
        win = inside & (z > sub)
        if not win.any():
            continue
        sub[win] = z[win]
        val = wa[..., None] * attrs[a] + wb[..., None] * attrs[b] + wc[..., None] * attrs[c]
        o = out[y0:y1 + 1, x0:x1 + 1]
        o[win] = val[win]
    return out, np.isfinite(zbuf)


def facial_flow(src: np.ndarray, tgt: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) facial flow (module docstring) from source and target meshes (N, 3) in crop pixels."""
    delta = (tgt - src) / (size / 2.0)  # face box side = size / 2 px
    flow, _ = rasterize(src, delta, size)
    return flow


def landmark_heatmap(tgt: np.ndarray, size: int, sigma: float = 1.5) -> np.ndarray:
    """(size, size, 1) MotionGAN-style heatmap of the target landmarks (max of Gaussians; the conditions study)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    heat = np.zeros((size, size), np.float32)
    for x, y in tgt[:, :2]:
        heat = np.maximum(heat, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma * sigma)))
    return heat[..., None]


def conditions(kind: str, src_p: np.ndarray, tgt_p: np.ndarray, au17: np.ndarray, size: int,
               meshes=None) -> np.ndarray:
    """(B, C, size, size) condition maps for a batch: the facial flow, tiled action units + Euler angles (AUs / 5,
    angles / 30°), or the target landmarks' heatmap (the conditions study). ``meshes``: the parameters' projections
    (:func:`project_np`) when the caller already has them."""
    b = len(src_p)
    if kind == "aus":
        vec = np.concatenate([au17 / 5.0, tgt_p[:, SL_ANG] / 30.0], 1).astype(np.float32)
        return np.broadcast_to(vec[:, :, None, None], (b, vec.shape[1], size, size)).copy()
    src, tgt = meshes if meshes is not None else (project_np(src_p, size), project_np(tgt_p, size))
    if kind == "flow":
        maps = [facial_flow(s, t, size) for s, t in zip(src, tgt, strict=True)]
    elif kind == "landmarks":
        maps = [landmark_heatmap(t, size) for t in tgt]
    else:
        raise KeyfaceError(f"unknown condition {kind!r} (known: flow, aus, landmarks)")
    return np.stack(maps).transpose(0, 3, 1, 2).astype(np.float32)


def _rigid_backward(src_p: np.ndarray, tgt_p: np.ndarray, size: int) -> np.ndarray:
    """Backward flow of the rigid head motion between two poses (the head surface of :func:`keyface.core.synth.face.
    head_depth`), for every pixel of the crop: target pixel → rest head point (inverse pose) → source pixel."""
    u = unit(size)
    ox, oy = origin(size)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)

    def pose(p):
        ang = dict(zip(ANGLE_ORDER, p[SL_ANG], strict=True))
        return fm.Pose({"head_pitch": ang["pitch"], "head_yaw": ang["yaw"], "head_roll": ang["roll"],
                        "body_yaw": 0.0, "body_roll": 0.0, "breathing": 0.0})

    st, ss = tgt_p[I_SCALE] * u, src_p[I_SCALE] * u
    cx = (xs - ox) / st - 2 * tgt_p[SL_T][0]
    cy = (ys - oy) / st - 2 * tgt_p[SL_T][1]
    rx, ry = pose(tgt_p).head_inverse(cx, cy, 0.0)
    qx, qy = pose(src_p).head_forward(rx, ry, fm.head_depth(rx, ry))
    sx = (qx + 2 * src_p[SL_T][0]) * ss + ox
    sy = (qy + 2 * src_p[SL_T][1]) * ss + oy
    return np.stack([sx - xs, sy - ys], axis=-1).astype(np.float32)


HEAD_FADE = (1.3, 1.9)  # the rigid flow fades from full to none between these distances (character units) from the
                        # face centre: the head with its hair is ~1.4 units in radius in the engine's characters


def backward_flow(src_p: np.ndarray, tgt_p: np.ndarray, size: int, meshes=None) -> tuple[np.ndarray, np.ndarray]:
    """ResWarp's backward flow for one frame (module docstring) and the mask of pixels where the mesh defines it.
    ``src_p``, ``tgt_p``: (N_PARAMS,) source fit and target parameters; ``meshes``: their (N, 3) projections when the
    caller already has them."""
    src, tgt = meshes if meshes is not None else (project_np(src_p, size)[0], project_np(tgt_p, size)[0])
    # the barycentric combination of the displacements (= that of the source positions minus the pixel, exactly:
    # barycentric coordinates reproduce the pixel), so equal meshes give exactly zero
    mesh_flow, covered = rasterize(tgt, src[:, :2] - tgt[:, :2], size)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    pose = np.r_[SL_ANG.start:SL_T.stop, I_SCALE]
    if np.array_equal(src_p[pose], tgt_p[pose]):
        rigid = np.zeros((size, size, 2), np.float32)  # the same head pose: no rigid motion
    else:
        rigid = _rigid_backward(src_p, tgt_p, size)
    ox, oy = origin(size)
    r = np.hypot(xs - ox, ys - oy) / (unit(size) * tgt_p[I_SCALE])
    fade = np.clip((HEAD_FADE[1] - r) / (HEAD_FADE[1] - HEAD_FADE[0]), 0, 1)[..., None]
    flow = np.where(covered[..., None], mesh_flow, rigid * fade)
    return flow.astype(np.float32), covered
