"""The ATW generator at render time: the crop at the grid size + driving values → low-res result and motion field."""

from __future__ import annotations

import numpy as np
import torch

from ...training import from_net, pick_device
from .conditioning import driving_from_schema
from .trainer import load_generator


class ATWRuntime:
    schema = "au17"

    def __init__(self, weights, device: str = "cpu"):
        self.device = pick_device(device)
        self.net = load_generator(weights, self.device)
        self.grid = (self.net.cfg.grid, self.net.cfg.grid)

    @torch.inference_mode()
    def __call__(self, low: np.ndarray, values: np.ndarray):
        """low (B, h, w, 4) float32 straight RGBA [0, 1]; values (B, 17) au17 intensities →
        (result (B, h, w, 4) float32 straight RGBA, flow (B, h, w, 2) backward, grid pixels)."""
        x = torch.from_numpy(np.ascontiguousarray(low, np.float32)).permute(0, 3, 1, 2)
        x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1) * 2 - 1
        c = torch.from_numpy(driving_from_schema(values))
        refined, _, flow = self.net(x.to(self.device), c.to(self.device))
        return from_net(refined), flow.permute(0, 2, 3, 1).float().cpu().numpy()
