"""The THA3 image convention, both ways (the official demo's ``extract_pytorch_image_from_PIL_image`` going in, and
its ``rgba_to_numpy_image`` — what it displays and saves — coming out).

In: straight sRGB RGBA in [0, 1] (keyface's convention, channels last) → RGB to linear light, alpha kept **straight**
(THA3 is trained on straight alpha, unlike THA4's premultiplied input), fully transparent pixels set to (0, 0, 0, 0)
(the demo does so "to avoid the colour influence to the model"), then ×2 − 1, channels first, float32.

Out: (x + 1)/2, RGB linear → sRGB (clipped to [0, 1]), alpha clipped to [0, 1], still straight; colour under zero
alpha is left as the network made it (as the demo does).

"Fully transparent" is alpha ≤ :data:`~keyface.core.pixels.ALPHA_EPS`, which for 8-bit sources is exactly alpha 0.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import KeyfaceError
from ...pixels import ALPHA_EPS, full_scale, linear_to_srgb, srgb_to_linear


def to_tha3(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 4) or (H, W, 4) straight sRGB RGBA (floats in [0, 1], or integers at full scale) → (B, 4, H, W)
    float32 in the THA3 convention."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 4:
        raise KeyfaceError(f"THA3 needs RGBA images (with transparency around the character); got shape {x.shape}")
    x = x.astype(np.float64) / full_scale(x.dtype)
    alpha = np.clip(x[..., 3:], 0, 1)
    clear = alpha <= ALPHA_EPS
    rgb = np.where(clear, 0.0, srgb_to_linear(x[..., :3]))
    out = np.concatenate([rgb, np.where(clear, 0.0, alpha)], axis=-1) * 2 - 1
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32))


def from_tha3(x: torch.Tensor) -> np.ndarray:
    """(B, 4, H, W) THA3 output → (B, H, W, 4) float32 straight sRGB RGBA in [0, 1]."""
    y = (x.detach().float().cpu().numpy().transpose(0, 2, 3, 1) + 1) / 2
    return np.concatenate([linear_to_srgb(y[..., :3]), np.clip(y[..., 3:], 0, 1)], axis=-1).astype(np.float32)
