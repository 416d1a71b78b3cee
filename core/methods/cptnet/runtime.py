"""CPTNet at render time: the crop at the generator's size + pose5 values → low-res result, motion field and residual
weight for ResWarp.

What feeds ResWarp (our reading of "the grid branch's field and the fusion mask"): the **flow** is the grid branch's
field (the only branch that moves source pixels; zero for the ``mask`` variant); the **residual weight** says where the
source's high-frequency detail may be carried over: A_face (the face stage kept the input there) × A_fusion (the
output came from the grid branch, whose pixels are the source's, moved by that flow). Where the mask branch or the face
stage painted new content, the weight falls to 0 and the lifted frame shows the generator's own (smooth) content
instead of ghosts of the source's eyes or mouth. Variants without fusion: ``grid`` uses A_face; ``mask`` uses A_face ×
the cascade's kept-in-place product with zero flow.
"""

from __future__ import annotations

import numpy as np
import torch

from ...reswarp import Box
from ...training import float_to_net, from_net, pick_device
from .networks import drive
from .trainer import load_generator


def head_box(face, width: int, height: int) -> tuple:
    """The head crop CPTNet was trained on (``keyface synth --framing head``) around a face box (x, y, side, side):
    a square of twice the face box's side whose centre sits an eighth of the face side above the face box's centre
    (the engine's face box is 2 × 2 units about (0, 0.25), the head crop 4 × 4 units about (0, 0)). Where that square
    leaves the image it is shifted back inside, and shrunk only if the image is smaller than it."""
    x, y, w, h = (int(v) for v in face)
    f = max(w, h)
    b = Box.square(x + w / 2, y + h / 2 - f / 8, 2 * f, width, height)
    return (b.x, b.y, b.w, b.h)


class CPTNetRuntime:
    schema = "pose5"

    def __init__(self, weights, device: str = "cpu"):
        self.device = pick_device(device)
        self.net = load_generator(weights, self.device)
        self.grid = (self.net.cfg.size, self.net.cfg.size)

    def default_box(self, source: np.ndarray) -> tuple:
        """No box given: the head crop around the automatically detected face box (:func:`head_box`)."""
        from ...facebox import detect_face_box

        b = detect_face_box(source)
        return head_box((b.x, b.y, b.w, b.h), source.shape[1], source.shape[0])

    @torch.inference_mode()
    def __call__(self, low: np.ndarray, values: np.ndarray):
        """low (B, h, w, 4) float32 straight RGBA [0, 1]; values (B, 5) pose5 → (result (B, h, w, 4) straight RGBA,
        flow (B, h, w, 2) backward, grid pixels, residual weight (B, h, w) in [0, 1])."""
        x = float_to_net(low).to(self.device)
        d = torch.from_numpy(drive(values)).to(self.device)
        out = self.net(x, d)
        cfg = self.net.cfg
        flow = out.get("flow", torch.zeros_like(x[:, :2]))
        weight = out["face_mask"]
        if "fusion_mask" in out:
            weight = weight * out["fusion_mask"]
        elif not cfg.uses_grid:
            weight = weight * out["mask_keep"]
        return (from_net(out["out"]), flow.permute(0, 2, 3, 1).float().cpu().numpy(),
                weight[:, 0].float().cpu().numpy())
