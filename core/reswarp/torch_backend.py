"""ResWarp's torch backend: the per-frame lift for batches of frames on CPU or CUDA.

The decomposition (pyramid and residuals) comes from the :class:`~keyface.core.reswarp.cpu.Lifter` (computed once
per source with OpenCV) and is uploaded once. Sampling reproduces the CPU path's geometry: the same float positions,
half-pixel centres, border replicate, bilinear or bicubic (a = −0.75, as OpenCV).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import strips, up_coords


def _positions(x: torch.Tensor, n: int) -> torch.Tensor:
    """Pixel positions → grid_sample's normalised coordinates (align_corners=False)."""
    return (2 * x.double() + 1) / n - 1


def sample_t(img: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor, interp: str = "linear") -> torch.Tensor:
    """img (B, C, H, W); maps (B, Ho, Wo) in pixels → (B, C, Ho, Wo)."""
    grid = torch.stack([_positions(map_x, img.shape[3]), _positions(map_y, img.shape[2])], dim=-1).to(img.dtype)
    mode = "bilinear" if interp == "linear" else "bicubic"
    return F.grid_sample(img, grid, mode=mode, padding_mode="border", align_corners=False)


class TorchLifter:
    def __init__(self, lifter, device: str = "cpu"):
        self.lifter = lifter
        self.device = torch.device(device)
        self.residuals = [torch.from_numpy(r).permute(2, 0, 1)[None].to(self.device) for r in lifter.residuals]

    def _up_maps(self, out_hw, in_hw, batch: int, rows: slice | None = None):
        rows = rows or slice(0, out_hw[0])
        ys = torch.from_numpy(up_coords(out_hw[0], in_hw[0], rows.start, rows.stop)).to(self.device)
        xs = torch.from_numpy(up_coords(out_hw[1], in_hw[1])).to(self.device)
        my, mx = torch.meshgrid(ys, xs, indexing="ij")
        return mx.expand(batch, -1, -1), my.expand(batch, -1, -1)

    def _level(self, k: int, result: torch.Tensor, flow: torch.Tensor, rows: slice, weight=None) -> torch.Tensor:
        """Rows ``rows`` of level k: up(coarser result) + the residual warped by the up-sampled field (× the
        up-sampled residual weight, when given)."""
        lf = self.lifter
        batch = result.shape[0]
        gh, gw = lf.grid
        h, w = lf.sizes[k]
        mx, my = self._up_maps((h, w), lf.sizes[k + 1], batch, rows)
        up = sample_t(result, mx, my)
        fx, fy = self._up_maps((h, w), (gh, gw), batch, rows)
        f = sample_t(flow, fx, fy)
        px = torch.arange(w, device=self.device, dtype=torch.float32)[None, None, :] + f[:, 0] * (w / gw)
        py = (torch.arange(rows.start, rows.stop, device=self.device, dtype=torch.float32)[None, :, None]
              + f[:, 1] * (h / gh))
        res = sample_t(self.residuals[k].expand(batch, -1, -1, -1), px, py, lf.interp)
        if weight is not None:
            res = res * sample_t(weight, fx, fy)
        return up + res

    @torch.no_grad()
    def lift(self, lows: np.ndarray, flows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Coarse levels whole; level 0 in row strips (bounded memory), each composited into the output frames."""
        lf = self.lifter
        batch = len(lows)
        result = torch.from_numpy(np.ascontiguousarray(lows)).permute(0, 3, 1, 2).to(self.device)
        flow = torch.from_numpy(np.ascontiguousarray(flows)).permute(0, 3, 1, 2).to(self.device)
        weight = (None if weights is None else
                  torch.from_numpy(np.ascontiguousarray(weights, np.float32))[:, None].to(self.device))
        for k in range(len(lf.sizes) - 2, 0, -1):
            result = self._level(k, result, flow, slice(0, lf.sizes[k][0]), weight)
        out = np.repeat(lf.source[None], batch, axis=0)
        cols = slice(0, lf.box.w)
        for rows in strips(0, lf.box.h, batch * lf.box.w):
            region = self._level(0, result, flow, rows, weight).permute(0, 2, 3, 1).cpu().numpy()
            for i in range(batch):
                out[i][lf.box.y + rows.start:lf.box.y + rows.stop, lf.box.x:lf.box.x + lf.box.w] = (
                    lf.composite(region[i], rows, cols, flows[i]))
        return out
