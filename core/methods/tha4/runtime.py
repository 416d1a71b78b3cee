"""THA4 at render time: an official (or keyface-distilled) student character model as a keyface generator.

The student animates one 512² character image (the THA framing: head near x 192–320, y 64–192). In a larger
document the region scaled to 512² is THA's frame around the face box (:func:`keyface.core.box.tha_frame`); a 512²
document without a box is a THA frame as it is. ResWarp lifts the 512² result back in place: the flow is the body
morpher's grid change in pixels, and the residual weight keeps the document's own detail only where the output is the
warped input — (1 − α) of the blend, and outside the regenerated face patch (the patch replaces the face box, so the
document's face detail would ghost over a changed expression).

Conversions: keyface's straight sRGB RGBA [0, 1] ↔ the official linear, premultiplied [−1, 1] convention
(:mod:`keyface.core.pixels`). The model id is ``tha4-student:<folder>`` for any character model folder.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...blocks import positions
from ...box import Box, tha_frame
from ...generator import Generated, Generator
from ...pixels import linear_to_srgb, premultiply, srgb_to_linear, unpremultiply
from ...weights import pick_device
from .student import FACE_BOX, Student, StudentWeights

SIZE = 512


def float_to_official(low: np.ndarray) -> torch.Tensor:
    """(B, 512, 512, 4) straight sRGB [0, 1] → (B, 4, 512, 512) official (linear, premultiplied, [−1, 1])."""
    x = premultiply(np.concatenate([srgb_to_linear(low[..., :3]), low[..., 3:]], axis=-1))
    return torch.from_numpy(np.ascontiguousarray((x * 2 - 1).astype(np.float32).transpose(0, 3, 1, 2)))


def official_to_float(x: torch.Tensor) -> np.ndarray:
    """(B, 4, H, W) official → (B, H, W, 4) straight sRGB [0, 1] (un-premultiplied, clipped)."""
    y = unpremultiply((x.detach().float().cpu().numpy().transpose(0, 2, 3, 1) + 1) / 2)
    return np.concatenate([linear_to_srgb(y[..., :3]), y[..., 3:]], axis=-1).astype(np.float32)


class THA4StudentRuntime(Generator):
    schema = "tha45"
    grid = (SIZE, SIZE)
    has_raw = True

    def __init__(self, folder, device: str = "cpu"):
        self.device = pick_device(device)
        self.student = Student(StudentWeights.load(folder), self.device)

    def working_box(self, face_box: Box, source: np.ndarray) -> Box:
        """THA's 512² frame around the face box (:func:`keyface.core.box.tha_frame`); it may leave the document."""
        return tha_frame(face_box)

    def raw(self, low: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The student's own output (B, 4, 512, 512) float32, official convention (linear, premultiplied, [−1, 1],
        unclamped)."""
        out = self.student(float_to_official(low), torch.from_numpy(np.asarray(values, np.float32)))
        return out["image"].cpu().numpy()

    def __call__(self, low: np.ndarray, values: np.ndarray) -> Generated:
        out = self.student(float_to_official(low), torch.from_numpy(np.asarray(values, np.float32)))
        grid_change = out["grid_change"]
        flow = (grid_change * (SIZE / 2)).permute(0, 2, 3, 1).cpu().numpy()
        face = torch.zeros(len(values), 1, SIZE, SIZE)
        face[(..., *Box(*FACE_BOX).slices)] = 1
        where = (positions(SIZE) + grid_change.cpu()).permute(0, 2, 3, 1)
        face_after = F.grid_sample(face, where, mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = ((1 - out["alpha"].cpu()).clamp(0, 1) * (1 - face_after))[:, 0].numpy()
        return Generated(official_to_float(out["image"]), flow.astype(np.float32), weight)
