"""The official THA4 image convention (reference README; the demo's ``extract_pytorch_image_from_PIL_image`` and its
save path): in — straight sRGB RGBA uint8 → linear RGB, premultiplied, ×2 − 1, CHW float32; out — (x + 1)/2, RGB
linear → sRGB (clipped), alpha clipped, *not* un-premultiplied (the demo's PNGs hold premultiplied colour)."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import KeyfaceError
from ...metrics import psnr
from ...pixels import linear_to_srgb, quantise, srgb_to_linear


def psnr_official(a, b) -> float:
    """PSNR of two official-convention images ([−1, 1]: peak-to-peak 2)."""
    return psnr(a, b, peak=2.0)


def to_official(rgba_u8: np.ndarray) -> torch.Tensor:
    """(512, 512, 4) uint8 straight sRGB RGBA → (1, 4, 512, 512) float32 in the official convention."""
    if rgba_u8.ndim != 3 or rgba_u8.shape[2] != 4:
        raise KeyfaceError("THA4 needs an RGBA image (with transparency around the character)")
    if rgba_u8.dtype != np.uint8:
        raise KeyfaceError("THA4's official input is an 8-bit image")
    x = rgba_u8.astype(np.float32) / np.float32(255.0)
    rgb = srgb_to_linear(x[..., :3]).astype(np.float32) * x[..., 3:]
    out = np.concatenate([rgb, x[..., 3:]], axis=2) * np.float32(2) - np.float32(1)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None]


def official_to_png(x: torch.Tensor) -> np.ndarray:
    """(4, H, W) official output → (H, W, 4) uint8 exactly as the demo saves it (premultiplied colour)."""
    y = (x.detach().float().cpu().numpy().transpose(1, 2, 0) + 1) / 2
    rgb = linear_to_srgb(y[..., :3])
    a = np.clip(y[..., 3:], 0, 1)
    return quantise(np.concatenate([rgb, a], axis=2))
