"""THA3 as a distillation teacher for THA4's character students (``keyface distill --teacher tha3``).

THA4's distiller (:mod:`keyface.core.methods.tha4.distill`) asks a teacher, for one character image in THA4's
official convention (linear RGB, **premultiplied**, [−1, 1]) and poses (B, 45), for the face patch its face student
learns and the body terms its body student learns. THA3's poser is another pipeline with other conventions, so this
adapter translates; the choices (THA3's paper and code say nothing about this use) are:

* **Images**: THA3 takes and gives straight alpha. The character goes in as straight alpha (premultiplied colour ÷
  alpha; fully transparent pixels (0, 0, 0, 0), as THA3's demo does), and every image that comes out — face patch,
  face-morphed image, final image, newly painted colour — is premultiplied by its own alpha for THA4.
* **Face patch**: THA3 morphs a 192² crop (rows 32–224, columns 160–352); THA4's face student paints a 128² patch
  (rows 80–208, columns 192–320), which lies inside it: the target is that part of THA3's morphed crop. What THA3's
  face morpher changes outside it (the tips of the eyebrows above row 80) the student cannot reproduce.
* **Body**: THA3's final warp is the editor's grid change (rotator + editor correction) applied to the face-morphed
  image, blended with newly painted colour by a **per-channel** (RGBA) alpha; THA4's body student has one alpha. The
  targets are the grid change itself, the face-morphed image warped by it, the editor's colour, and the mean of its
  four alpha channels; the final-image term (the last and heaviest phase of THA4's schedule) is THA3's own output, so
  what the single alpha cannot express is learnt against the real result.
* The pose-independent part (eyebrow decomposer, combiner encoder) is evaluated once per character image.
* **Size**: THA3 always poses the 512² character (``full_input``); with ``size`` below 512 (``keyface distill --size
  256``) every output is area-averaged down to it (grid changes are in normalised coordinates, so their average is
  the field at the coarser grid), and the students learn at that size — a quarter of the body student's cost at 256².
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...pixels import ALPHA_EPS
from .networks import apply_grid_change
from .poser import FACE_BOX, THA3Poser

THA4_FACE = (80, 208, 192, 320)  # THA4's face patch (rows, columns) in the 512² frame


def premultiplied(x: torch.Tensor) -> torch.Tensor:
    """Straight-alpha (B, 4, H, W) in [−1, 1] → premultiplied, same range."""
    y = (x + 1) / 2
    a = y[:, 3:4].clamp(0, 1)
    return torch.cat([y[:, :3] * a, a], 1) * 2 - 1


def straight(x: torch.Tensor) -> torch.Tensor:
    """Premultiplied (B, 4, H, W) in [−1, 1] → straight alpha, fully transparent pixels (0, 0, 0, 0) (THA3's input)."""
    y = (x + 1) / 2
    a = y[:, 3:4].clamp(0, 1)
    clear = a <= ALPHA_EPS
    rgb = torch.where(clear, torch.zeros_like(y[:, :3]), y[:, :3] / a.clamp_min(ALPHA_EPS)).clamp(0, 1)
    return torch.cat([rgb, torch.where(clear, torch.zeros_like(a), a)], 1) * 2 - 1


def _face_patch(crop: torch.Tensor) -> torch.Tensor:
    """THA4's 128² face patch out of THA3's 192² face crop (both in the 512² frame)."""
    y0, x0 = THA4_FACE[0] - FACE_BOX[0], THA4_FACE[2] - FACE_BOX[2]
    return crop[:, :, y0:y0 + 128, x0:x0 + 128]


class THA3Teacher:
    """A :mod:`~keyface.core.methods.tha4.distill` teacher backed by the THA3 poser (module docstring)."""

    full_input = True  # given the 512² character whatever ``size`` is

    def __init__(self, folder=None, device="cpu", size: int = 512):
        self.size = size
        self.poser = THA3Poser.load(folder, device)
        self.device = self.poser.device
        self._key = self._cache = None

    def _prepared(self, image: torch.Tensor):
        key = (image.data_ptr(), tuple(image.shape), image._version)
        if key != self._key:
            self._cache = self.poser.prepare(straight(image.to(self.device, torch.float32)))
            self._key = key
        return self._cache

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1] * self.size // 512
        return x if n == x.shape[-1] else F.interpolate(x, size=(n, n), mode="area")

    @torch.no_grad()
    def morph_face(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """The face stage alone: THA4's face patch (B, 4, size/4, size/4), premultiplied."""
        return self._scaled(_face_patch(premultiplied(self.poser.morph_face(self._prepared(image), pose))))

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, pose: torch.Tensor) -> dict:
        out = self.poser.pose(self._prepared(image), pose)
        y0, y1, x0, x1 = FACE_BOX
        face_image = premultiplied(out["face_morphed"])
        grid = out["editor_grid_change"]
        warped = apply_grid_change(face_image, grid)
        out = {"face": _face_patch(face_image[:, :, y0:y1, x0:x1]), "face_image": face_image,
               "grid_change": grid, "alpha": out["editor_alpha"].mean(1, keepdim=True),
               "color_change": premultiplied(out["editor_color"]), "warped_image": warped,
               "image": premultiplied(out["image"])}
        return {k: self._scaled(v) for k, v in out.items()}

