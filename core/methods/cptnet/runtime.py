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

from ...box import Box, head_crop
from ...generator import Generated, Generator
from ...pixels import float_to_net, from_net
from ...weights import pick_device
from .networks import drive, load_generator


class CPTNetRuntime(Generator):
    schema = "pose5"

    def __init__(self, weights, device: str = "cpu", net=None):
        """``net``: a generator already in memory (an adaptation's) instead of ``weights``."""
        self.device = pick_device(device)
        self.net = load_generator(weights, self.device) if net is None else net
        self.grid = (self.net.cfg.size, self.net.cfg.size)

    def working_box(self, face_box: Box, source: np.ndarray) -> Box:
        """The head crop around the face box (:func:`keyface.core.box.head_crop`: the framing it was trained on)."""
        return head_crop(face_box, source.shape[1], source.shape[0])

    @torch.inference_mode()
    def __call__(self, low: np.ndarray, values: np.ndarray) -> Generated:
        """The output, the grid branch's field as flow and the residual weight of the module docstring."""
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
        return Generated(from_net(out["out"]), flow.permute(0, 2, 3, 1).float().cpu().numpy(),
                         weight[:, 0].float().cpu().numpy())
