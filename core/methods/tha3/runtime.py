"""THA3 at render time: the official poser as a keyface generator for any character in THA's framing.

**Region.** The face box is THA's head box (columns 192–320, rows 64–192 of the 512² frame); the poser runs on the
frame ``[x − 1.5·s, y − 0.5·s, 4·s, 4·s]`` around a face box ``[x, y, s, s]`` (:func:`keyface.core.box.tha_frame`),
scaled to 512². Parts of the frame outside the document are transparent (the render path pads the document; see
:class:`keyface.core.pipeline.FrameJob`). Without a box a 512² document is THA's frame as it is; any other gets the
detected box (:func:`keyface.core.generator.default_face_box`).

**What feeds ResWarp.** The flow is the editor's field (the rotator's grid change plus the editor's correction) in
pixels. THA3 repaints the face (the face morpher re-renders the whole face crop, even at rest) and blends new colour
over the body (the editor), so the render path gates its bias cancellation and the residual by what changed
(``residual = "gated"``, :func:`keyface.core.pipeline.gated`): the document's own detail is carried with the motion
where THA3's output only moved, and where THA3 painted new content (eyes closing, the mouth opening, hair a turn
reveals) its own pixels show, with no ghost of the document's old detail.

**Speed.** The pose-independent part (the eyebrow decomposer and the eyebrow combiner's encoder) is computed once per
image and kept while frames of the same image come (a render job sends the same crop every time).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ...box import Box, tha_frame
from ...generator import Generated, Generator
from ...weights import pick_device
from .convention import from_tha3, to_tha3
from .poser import SIZE, THA3Poser, flow_pixels


class THA3Runtime(Generator):
    schema = "tha45"
    grid = (SIZE, SIZE)
    has_raw = True
    batch_size = 2
    residual = "gated"  # THA3 repaints the face and re-renders the body: keyface.core.pipeline.gated

    def __init__(self, folder=None, device: str = "cpu"):
        self.device = pick_device(device)
        self.poser = THA3Poser.load(folder, self.device)
        self._prepared: tuple[bytes, object] | None = None  # (digest of the image, the poser's cache)

    def working_box(self, face_box: Box, source: np.ndarray) -> Box:
        """THA's 512² frame around the face box; it may leave the document (the render path pads it)."""
        return tha_frame(face_box)

    def _pose(self, low: np.ndarray, values: np.ndarray) -> dict:
        """The poser's outputs for (B, 512, 512, 4) images (one image repeated, as the render path sends) and poses."""
        first = np.ascontiguousarray(low[0])
        if any(not np.array_equal(first, im) for im in low[1:]):  # different images: one pass each
            parts = [self._pose(low[i:i + 1], values[i:i + 1]) for i in range(len(low))]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        digest = hashlib.blake2b(first.tobytes(), digest_size=16).digest()
        if self._prepared is None or self._prepared[0] != digest:
            self._prepared = (digest, self.poser.prepare(to_tha3(first[None]).to(self.device)))
        pose = torch.from_numpy(np.ascontiguousarray(values, np.float32)).to(self.device)
        return {k: v.detach().float().cpu() for k, v in self.poser.pose(self._prepared[1], pose).items()}

    def raw(self, low: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The poser's output index 0: (B, 4, 512, 512) float32 in the THA3 convention (linear RGB, straight alpha,
        [−1, 1], unclamped)."""
        return self._pose(low, values)["image"].numpy()

    def __call__(self, low: np.ndarray, values: np.ndarray) -> Generated:
        out = self._pose(low, values)
        flow = flow_pixels(out["editor_grid_change"]).permute(0, 2, 3, 1).numpy()
        return Generated(from_tha3(out["image"]), flow.astype(np.float32))
