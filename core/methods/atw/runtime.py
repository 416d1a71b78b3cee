"""The ATW generator at render time: the face box at the grid size + au17 values → low-res result and motion field."""

from __future__ import annotations

import numpy as np
import torch

from ...box import Box
from ...generator import Generated, Generator
from ...pixels import float_to_net, from_net
from ...weights import pick_device
from .conditioning import driving_from_schema
from .networks import load_generator

FACE_CROP_SHIFT = 1 / 8  # the engine's "face" framing (synth FACE_CROP): 2 × 2 units about (0, 0.25), i.e. the face box
#                          (2 × 2 units about the head's origin) moved down by an eighth of its side


class ATWRuntime(Generator):
    schema = "au17"

    def __init__(self, weights, device: str = "cpu", net=None):
        """``net``: an already loaded generator (an adaptation's, being evaluated) instead of ``weights``."""
        self.device = pick_device(device)
        self.net = load_generator(weights, self.device) if net is None else net.to(self.device).eval()
        self.grid = (self.net.cfg.grid, self.net.cfg.grid)

    def working_box(self, face_box: Box, source: np.ndarray) -> Box:
        """The crop ATW was trained on (``keyface synth --framing face``): the face box moved down by an eighth of its
        side (the engine's face crop sits between the eyes and the chin, THA's head box over brows to chin)."""
        x, y, w, h = face_box
        return Box(x, y + int(round(FACE_CROP_SHIFT * h)), w, h)

    @torch.inference_mode()
    def __call__(self, low: np.ndarray, values: np.ndarray) -> Generated:
        """The refinement network's image and the motion network's flow (the only field that moves pixels)."""
        c = torch.from_numpy(driving_from_schema(values))
        refined, _, flow = self.net(float_to_net(low).to(self.device), c.to(self.device))
        return Generated(from_net(refined), flow.permute(0, 2, 3, 1).float().cpu().numpy())
