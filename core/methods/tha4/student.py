"""THA4 student networks (seed 001 §5, App. C–D): the SIREN face morpher and the multi-resolution SIREN body morpher,
with a loader for the official character models.

Architecture (what the official files hold, and what the seed describes):

* **Face morpher**: a SIREN over the 128² face crop. Input per pixel: its position (x, y) and the 39 face parameters
  (pose[0:39]); 8 sine layers 128 wide (sin(ω0·(Wx + b)), ω0 = 30) and a linear layer to RGBA. It never reads the
  image: the patch it generates *replaces* the face box (rows 80–207, columns 192–319 of the 512² image).
* **Body morpher**: three SIREN levels at 128², 256² and 512²; each has 3 sine layers (widths 360-360-180,
  180-180-90, 90-90-90); level l's input is [bilinear 2× up-sampling of level l−1's features, position, the 45 pose
  values]; a final linear layer gives 7 channels: grid change (2, normalised offsets), alpha (1), colour change (4).
  Image formation: warped = grid_sample(image with the face patch, identity + grid change) (bilinear, border,
  align_corners = False); output = (1 − α)·warped + α·colour change.
* Positions are pixel centres in [−1, 1]: (2i + 1)/n − 1, channel order (x, y), then the pose (as the official code —
  found by matching the official reference outputs; see tests/test_tha4.py).

Convention (official): linear-light RGB, premultiplied alpha, [−1, 1], float32, unclamped.

Two evaluators of the same weights:

* :class:`ReferenceStudent` — layer by layer as written above (1×1 convolutions on full-resolution tensors): the
  straightforward evaluation, kept as the benchmark's reference.
* :class:`Student` — the fast path, same outputs within float rounding: (1) the pose-independent terms are computed
  once per character: the first layers' position terms W_pos·pos become stored planes, and the pose enters each first
  layer as one bias vector W_pose·p + b (no 47-channel convolution at all); (2) because bilinear up-sampling is linear
  and per channel, W_f·up(h) = up(W_f·h): the first layer of levels 1 and 2 multiplies the coarser level's features at
  the coarser resolution, then up-samples the product (4× fewer multiply-adds for those layers); (3) ω0 is folded into
  the weights and layers run as (pixels × channels) matrix products with in-place sine; (4) every level runs its layer
  stack on strips of rows, so activations stay cache-sized; (5) inference mode, and half precision on CUDA when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...blocks import positions
from ...box import Box
from ...errors import KeyfaceError

OMEGA = 30.0
FACE_BOX = (192, 80, 128, 128)  # the face crop (x, y, w, h) of the 512² image (mode_14)
FACE_PARAMS = 39
POSE_DIM = 45
LEVELS = (128, 256, 512)


def _check_official(sd: dict, kind: str) -> None:
    if kind == "face":
        want = {f"siren.sine_layers.{i}.linear.{p}" for i in range(8) for p in ("weight", "bias")}
        want |= {"siren.last_linear.weight", "siren.last_linear.bias"}
    else:
        want = {f"siren_layers.{lv}.{j}.linear.{p}" for lv in range(3) for j in range(3) for p in ("weight", "bias")}
        want |= {"last_linear.weight", "last_linear.bias"}
    missing = want - set(sd)
    if missing:
        raise KeyfaceError(f"not an official THA4 student {kind} morpher (missing {sorted(missing)[:3]} …)")


@dataclass
class StudentWeights:
    """The two official state dicts, as plain tensors: face [(W, b)] × 8 + last; body [[(W, b)] × 3] × 3 + last."""

    face: list
    face_last: tuple
    body: list
    body_last: tuple

    @classmethod
    def load(cls, folder) -> StudentWeights:
        """A character model folder: the official ``face_morpher.pt`` / ``body_morpher.pt`` (``torch.load`` with
        ``weights_only=True``, mapped to the CPU) or keyface's ``.safetensors`` of the same state dicts."""
        folder = Path(folder)
        sds = {}
        for kind in ("face", "body"):
            pt, st = folder / f"{kind}_morpher.pt", folder / f"{kind}_morpher.safetensors"
            try:
                if st.exists():
                    from safetensors.torch import load_file

                    sds[kind] = load_file(str(st), device="cpu")
                elif pt.exists():
                    sds[kind] = torch.load(pt, weights_only=True, map_location="cpu")
                else:
                    raise KeyfaceError(f"{pt} not found (a THA4 character model has face_morpher.pt and "
                                       "body_morpher.pt, or keyface's .safetensors of them)")
            except KeyfaceError:
                raise
            except Exception as exc:  # any unpickling problem means a bad file for the user
                raise KeyfaceError(f"cannot read the {kind} morpher in {folder}: {exc}") from None
            _check_official(sds[kind], kind)
        f, b = sds["face"], sds["body"]

        def wb(sd, key):
            return sd[f"{key}.weight"][:, :, 0, 0].float(), sd[f"{key}.bias"].float()

        return cls(face=[wb(f, f"siren.sine_layers.{i}.linear") for i in range(8)],
                   face_last=wb(f, "siren.last_linear"),
                   body=[[wb(b, f"siren_layers.{lv}.{j}.linear") for j in range(3)] for lv in range(3)],
                   body_last=wb(b, "last_linear"))


def compose(image: torch.Tensor, face_patch: torch.Tensor, body_out: torch.Tensor) -> dict:
    """The official image formation from the body morpher's 7 channels at 512²."""
    rows, cols = Box(*FACE_BOX).slices
    img = image.expand(len(face_patch), -1, -1, -1).clone()
    img[:, :, rows, cols] = face_patch
    grid_change, alpha, color = body_out[:, 0:2], body_out[:, 2:3], body_out[:, 3:7]
    n = image.shape[-1]
    grid = (positions(n, image.device, image.dtype) + grid_change).permute(0, 2, 3, 1)
    warped = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return {"image": (1 - alpha) * warped + alpha * color, "alpha": alpha, "color_change": color,
            "warped_image": warped, "grid_change": grid_change, "face": face_patch, "face_image": img}


class ReferenceStudent:
    """The straightforward evaluation (1×1 convolutions at full resolution, layer by layer)."""

    def __init__(self, weights: StudentWeights, device="cpu"):
        self.w = weights
        self.device = torch.device(device)

    def _conv(self, x, wb):
        w, b = wb
        return F.conv2d(x, w.to(self.device)[:, :, None, None], b.to(self.device))

    @torch.no_grad()
    def face(self, pose: torch.Tensor) -> torch.Tensor:
        n = 128
        p = pose[:, :FACE_PARAMS, None, None].expand(-1, -1, n, n)
        x = torch.cat([positions(n, self.device).expand(len(pose), -1, -1, -1), p], 1)
        for wb in self.w.face:
            x = torch.sin(OMEGA * self._conv(x, wb))
        return self._conv(x, self.w.face_last)

    @torch.no_grad()
    def body(self, pose: torch.Tensor) -> torch.Tensor:
        feats = None
        for level, n in enumerate(LEVELS):
            parts = [] if feats is None else [F.interpolate(feats, size=(n, n), mode="bilinear", align_corners=False)]
            p = pose[:, :, None, None].expand(-1, -1, n, n)
            x = torch.cat(parts + [positions(n, self.device).expand(len(pose), -1, -1, -1), p], 1)
            for wb in self.w.body[level]:
                x = torch.sin(OMEGA * self._conv(x, wb))
            feats = x
        return self._conv(feats, self.w.body_last)

    def __call__(self, image: torch.Tensor, pose: torch.Tensor) -> dict:
        image, pose = image.to(self.device), pose.to(self.device)
        with torch.no_grad():
            return compose(image, self.face(pose), self.body(pose))


def add_up2(dst: torch.Tensor, z: torch.Tensor, r0: int, r1: int) -> None:
    """dst (r1 − r0, 2w, C) += rows r0:r1 (both even) of the bilinear 2× up-sampling (align_corners=False, edges
    clamped) of z (h, w, C), channels-last: output row 2i reads rows i and i − 1 with weights 0.75 / 0.25, row 2i + 1
    rows i and i + 1 (likewise for columns) — what ``F.interpolate(scale_factor=2, mode="bilinear")`` computes, with
    no gather and no transposed memory access."""
    h, c0, c1 = z.shape[0], r0 // 2, r1 // 2
    zm = z[c0:c1]
    zu = z[c0 - 1:c1 - 1] if c0 > 0 else torch.cat([z[:1], z[:c1 - 1]])
    zd = z[c0 + 1:c1 + 1] if c1 < h else torch.cat([z[c0 + 1:h], z[h - 1:h]])
    rows = dst.view(c1 - c0, 2, zm.shape[1], 2, -1)         # (coarse row, row parity, coarse col, col parity, C)
    for parity, v in ((0, torch.lerp(zm, zu, 0.25)), (1, torch.lerp(zm, zd, 0.25))):
        even, odd = rows[:, parity, :, 0], rows[:, parity, :, 1]
        even[:, 1:].add_(torch.lerp(v[:, 1:], v[:, :-1], 0.25))
        even[:, 0].add_(v[:, 0])
        odd[:, :-1].add_(torch.lerp(v[:, :-1], v[:, 1:], 0.25))
        odd[:, -1].add_(v[:, -1])


class Student:
    """The fast evaluation of the same weights (see the module docstring for what is done once and what is saved)."""

    def __init__(self, weights: StudentWeights, device="cpu", half: bool = False):
        self.device = torch.device(device)
        self.dtype = torch.float16 if half and self.device.type == "cuda" else torch.float32
        dev, dt = self.device, self.dtype

        def prep(wb):  # ω0 folded in; (in, out) for x @ W
            return (OMEGA * wb[0]).t().contiguous().to(dev, dt), (OMEGA * wb[1]).to(dev, dt)

        # face: first layer = position plane (stored) + pose vector
        w0, b0 = weights.face[0]
        pos = positions(128, dev).permute(0, 2, 3, 1).reshape(-1, 2)
        self.face_pos = (OMEGA * (pos @ w0[:, :2].t().to(dev))).to(dt)                 # (n², 128)
        self.face_pose = (OMEGA * w0[:, 2:]).t().contiguous().to(dev, dt)              # (39, 128)
        self.face_b0 = (OMEGA * b0).to(dev, dt)
        self.face_layers = [prep(wb) for wb in weights.face[1:]]
        self.face_last = (weights.face_last[0].t().contiguous().to(dev, dt), weights.face_last[1].to(dev, dt))
        # body: per level, first layer split into features / position (stored) / pose terms
        self.levels = []
        for level, n in enumerate(LEVELS):
            w0, b0 = weights.body[level][0]
            nf = w0.shape[1] - 2 - POSE_DIM
            pos = positions(n, dev).permute(0, 2, 3, 1).reshape(-1, 2)
            self.levels.append({
                "n": n,
                "feat": (OMEGA * w0[:, :nf]).t().contiguous().to(dev, dt) if nf else None,   # (nf, out)
                "pos": (OMEGA * (pos @ w0[:, nf:nf + 2].t().to(dev))).to(dt),               # (n², out)
                "pose": (OMEGA * w0[:, nf + 2:]).t().contiguous().to(dev, dt),                # (45, out)
                "b0": (OMEGA * b0).to(dev, dt),
                "rest": [prep(wb) for wb in weights.body[level][1:]],
            })
        self.body_last = (weights.body_last[0].t().contiguous().to(dev, dt), weights.body_last[1].to(dev, dt))

    @staticmethod
    def _sine_stack(x, layers):
        for w, b in layers:
            x = torch.addmm(b, x, w).sin_()
        return x

    def face(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 39+) pose → (B, 4, 128, 128) patch."""
        outs = []
        for p in pose[:, :FACE_PARAMS].to(self.device, self.dtype):
            x = (self.face_pos + (p @ self.face_pose + self.face_b0)).sin_()
            x = self._sine_stack(x, self.face_layers)
            x = torch.addmm(self.face_last[1], x, self.face_last[0])
            outs.append(x.t().reshape(1, 4, 128, 128))
        return torch.cat(outs)

    STRIP_PIXELS = 32768  # pixels per strip: a layer's activations (~12 MB at width 90) stay near the cache

    def body(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 45) pose → (B, 7, 512, 512): grid change, alpha, colour change. Each level runs its whole layer stack
        on strips of rows (cache-sized activations instead of 90 MB tensors per layer); the coarser level's product
        is kept channels-last and up-sampled 2× straight into the strip (:func:`add_up2`)."""
        outs = []
        for p in pose.to(self.device, self.dtype):
            z = None
            for i, lv in enumerate(self.levels):
                n = lv["n"]
                bias = p @ lv["pose"] + lv["b0"]
                last = i == len(self.levels) - 1
                w_next, b_next = self.body_last if last else (self.levels[i + 1]["feat"], None)
                out = torch.empty(n, n, w_next.shape[1], device=self.device, dtype=self.dtype)  # channels-last
                rows = max(2, self.STRIP_PIXELS // n)
                rows -= rows % 2
                for r0 in range(0, n, rows):
                    r1 = min(n, r0 + rows)
                    pre = lv["pos"][r0 * n:r1 * n] + bias
                    if z is not None:
                        add_up2(pre.view(r1 - r0, n, -1), z, r0, r1)
                    h = self._sine_stack(pre.sin_(), lv["rest"])
                    y = torch.addmm(b_next, h, w_next) if last else h @ w_next
                    out[r0:r1] = y.view(r1 - r0, n, -1)
                z = out
            outs.append(z.permute(2, 0, 1)[None])
        return torch.cat(outs)

    def __call__(self, image: torch.Tensor, pose: torch.Tensor) -> dict:
        with torch.inference_mode():
            image = image.to(self.device, self.dtype)
            out = compose(image, self.face(pose), self.body(pose))
        return {k: v.float() for k, v in out.items()}
