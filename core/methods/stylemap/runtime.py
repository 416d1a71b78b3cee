"""Style mapping at render time: the head crop + ``kp`` keys → low-res result, ResWarp's flow and residual weight.

1. **Detect** the source crop once (cached per crop): canonical keypoints c, its pose (yaw, pitch, roll, t) and
   expression deltas δ_s, its keypoints x_s = R_s·c + t_s + δ_s.
2. **Keys are offsets from the source** (:func:`drive`): angles_d = angles_s + keys; the head turns about the model's
   pivot (t_d = t_s + (R_s − R_d)·p + the translation keys); the expression keys are head-frame deltas added to the
   source's own, δ_d = R_d·(R_sᵀ·δ_s + keys). Zero keys give x_d = x_s exactly, and every warp is the identity.
3. **The generator** warps the source's feature volume by the keypoints' first-order motions and paints the frame;
   the composed motion's depth-averaged displacement at the grid size is ResWarp's flow (:func:`.networks.flow_2d`),
   the occlusion mask o, up-sampled, its residual weight (1 where the source is visible through the warp, toward 0
   where the network paints what the source does not show).
4. **The low-res result** is o · (the source crop warped by that flow) + (1 − o) · the generator's image, in
   premultiplied colour (our choice): where the source is visible the frame is the source itself, moved, and the
   network's own (blurrier) paint shows only where something new appears — an open mouth, a lid over the eye, the far
   side of a turned head. Adding the generator's difference instead (``source + G(target) − G(rest)``) put coloured
   fringes on every edge the head moved.

:func:`relative_keys` is :func:`drive`'s inverse: the keys that give a source another frame's pose and expression
(``keyface keys-from-video``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from ...box import Box, head_crop
from ...generator import Generated, Generator
from ...pipeline import CANCELLED_ALPHA_EPS, warp_low
from ...pixels import float_to_net, from_net, premultiply, unpremultiply
from ...rig import get_schema
from ...weights import pick_device
from . import networks as N

SCHEMA = "kp"
ANGLES = ("yaw", "pitch", "roll")
_S = get_schema(SCHEMA)
I_ANG = np.array([_S.index(a) for a in ANGLES])
I_T = np.array([_S.index(f"t{a}") for a in "xyz"])
I_EXP = np.array([i for i, n in enumerate(_S.names) if n.startswith("exp_")])


def _rot(angles: torch.Tensor) -> torch.Tensor:
    return N.rotation(angles[:, 0], angles[:, 1], angles[:, 2])


def detection_arrays(det: dict) -> dict:
    """A detection (:meth:`.networks.StyleMap.detect`) with its angles stacked: ``c``, ``angles`` (B, 3: yaw, pitch,
    roll), ``t``, ``delta``, ``x``, ``R`` (tensors; :meth:`StyleMapRuntime.detect` returns them as numpy arrays)."""
    return {"c": det["c"], "angles": torch.stack([det["angles"][a] for a in ANGLES], -1), "t": det["t"],
            "delta": det["delta"], "x": det["x"], "R": det["R"]}


def drive(det: dict, keys: torch.Tensor, pivot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source detections (tensors, :func:`detection_arrays`) + (B, 51) ``kp`` keys → driving keypoints and rotation
    (module docstring, step 2)."""
    k = keys.float()
    ang = det["angles"] + k[:, I_ANG]
    r_s, r_d = det["R"], _rot(ang)
    t_d = det["t"] + (r_s - r_d) @ pivot + k[:, I_T]
    head = det["delta"] @ r_s + k[:, I_EXP].reshape(len(k), -1, 3)  # δ_s in the head frame (Rᵀ·δ per row) + keys
    x_d = det["c"] @ r_d.transpose(1, 2) + t_d[:, None] + head @ r_d.transpose(1, 2)
    return x_d, r_d


def relative_keys(ref: dict, frames: dict, pivot: np.ndarray) -> np.ndarray:
    """(F, 51) ``kp`` keys that give a source with detection ``ref`` (one frame: arrays of batch 1) the pose and
    expression of each detected frame: :func:`drive`'s inverse, so ``drive(ref, relative_keys(ref, f))`` moves ref's
    keypoints exactly as f's moved from ref's pose (angles, the translation about the pivot, head-frame deltas)."""
    n = len(frames["angles"])
    keys = np.zeros((n, len(_S)), np.float32)
    keys[:, I_ANG] = frames["angles"] - ref["angles"]
    r0, r = ref["R"][0], frames["R"]
    keys[:, I_T] = frames["t"] - ref["t"] - (r0[None] - r) @ pivot
    head = np.einsum("fkj,fji->fki", frames["delta"], r) - (ref["delta"][0] @ r0)[None]
    keys[:, I_EXP] = head.reshape(n, -1)
    return keys


class StyleMapRuntime(Generator):
    schema = SCHEMA
    batch_size = 4
    has_motion = True

    def __init__(self, weights, device: str = "cpu"):
        self.device = pick_device(device)
        self.net = N.load_model(weights, self.device)
        self.net.eval()
        size = self.net.cfg.size
        self.grid = (size, size)
        self._det: dict[bytes, dict] = {}

    def working_box(self, face_box: Box, source: np.ndarray) -> Box:
        return head_crop(face_box, source.shape[1], source.shape[0])

    @torch.inference_mode()
    def detect(self, low: np.ndarray) -> dict:
        """(B, h, w, 4) straight RGBA crops → their detections (numpy, :func:`detection_arrays`)."""
        outs = []
        for i in range(0, len(low), 16):
            det = detection_arrays(self.net.detect(float_to_net(low[i:i + 16]).to(self.device)))
            outs.append({k: v.float().cpu().numpy() for k, v in det.items()})
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def motion_keys(self, crops: np.ndarray) -> np.ndarray:
        """Each crop's pose and expression relative to the first (:func:`relative_keys`)."""
        det = self.detect(crops)
        return relative_keys({k: v[:1] for k, v in det.items()}, det, self.net.pivot.cpu().numpy())

    def _source(self, low: np.ndarray) -> dict:
        key = hashlib.sha1(np.ascontiguousarray(low, np.float32).tobytes()).digest()
        if key not in self._det:
            if len(self._det) > 8:
                self._det.clear()
            self._det[key] = {k: v[0] for k, v in self.detect(low[None]).items()}
        return self._det[key]

    @torch.inference_mode()
    def __call__(self, low: np.ndarray, values: np.ndarray) -> Generated:
        dets = [self._source(x) for x in low]
        det = {k: torch.from_numpy(np.stack([d[k] for d in dets])).to(self.device) for k in dets[0]}
        keys = torch.from_numpy(np.asarray(values, np.float32)).to(self.device)
        x_d, r_d = drive(det, keys, self.net.pivot)
        res = self.net(float_to_net(low).to(self.device), det["x"], x_d, det["R"], r_d)
        size = self.grid[0]
        flow = N.flow_2d(res["motion"], size).permute(0, 2, 3, 1).float().cpu().numpy()
        weight = F.interpolate(res["occlusion"], size=self.grid, mode="bilinear", align_corners=False)[:, 0]
        weight = weight.clamp(0, 1).float().cpu().numpy()
        paint = premultiply(from_net(res["out"]))
        moved = np.stack([warp_low(premultiply(x).astype(np.float32), f) for x, f in zip(low, flow, strict=True)])
        out = unpremultiply(weight[..., None] * moved + (1 - weight[..., None]) * paint, eps=CANCELLED_ALPHA_EPS)
        return Generated(np.clip(out, 0, 1).astype(np.float32), flow, weight)
