"""Pixel conventions, written once: sRGB ↔ linear, straight ↔ premultiplied alpha, quantisation, and the network
tensors keyface's own generators use (premultiplied RGBA in [−1, 1], channels first).

keyface's working convention between modules is **straight sRGB RGBA float32 in [0, 1]**, channels last. Colour
where alpha is at most :data:`ALPHA_EPS` carries no information and is set to 0 when un-premultiplying.
"""

from __future__ import annotations

import numpy as np

ALPHA_EPS = 1e-4  # alpha at or below this holds no meaningful colour


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] (clipped) → linear light."""
    c = np.clip(c, 0, 1)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light (clipped to [0, 1]) → sRGB-encoded values."""
    c = np.clip(c, 0, 1)
    return np.where(c <= 0.003130804953560372, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def premultiply(x: np.ndarray) -> np.ndarray:
    """Straight RGBA (channels last) → premultiplied."""
    return np.concatenate([x[..., :3] * x[..., 3:], x[..., 3:]], axis=-1)


def unpremultiply(x: np.ndarray, eps: float = ALPHA_EPS) -> np.ndarray:
    """Premultiplied RGBA (channels last) → straight RGBA in [0, 1], float32; alpha ≤ ``eps`` gets colour 0."""
    a = np.clip(x[..., 3:], 0, 1)
    rgb = np.where(a > eps, x[..., :3] / np.maximum(a, eps), 0)
    return np.clip(np.concatenate([rgb, a], axis=-1), 0, 1).astype(np.float32)


def full_scale(dtype) -> float:
    """The value of full intensity for an image dtype: 255 for uint8, 65535 for uint16, 1 for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def quantise(x: np.ndarray, dtype=np.uint8, scale: float | None = None) -> np.ndarray:
    """Values in [0, 1] (× ``scale``, default the dtype's full scale) → the integer dtype, rounded and clipped."""
    top = full_scale(dtype)
    return np.clip(np.rint(x * (top if scale is None else scale)), 0, top).astype(dtype)


def to_unit(img: np.ndarray) -> np.ndarray:
    """An image of any integer or float depth → float32 in [0, 1] (floats are taken as already there)."""
    return img.astype(np.float32) / np.float32(full_scale(img.dtype))


def convert_depth(img: np.ndarray, dtype) -> np.ndarray:
    """An image → the same image at another depth (uint8, uint16, float32), rounded where it is an integer."""
    dtype = np.dtype(dtype)
    if img.dtype == dtype:
        return img
    v = img.astype(np.float64) / full_scale(img.dtype)
    return v.astype(dtype) if not np.issubdtype(dtype, np.integer) else quantise(v, dtype)


def with_alpha(img: np.ndarray) -> np.ndarray:
    """(…, 3) or (…, 4) float image → (…, 4), opaque where there was no alpha."""
    if img.shape[-1] == 4:
        return img
    return np.concatenate([img, np.ones(img.shape[:-1] + (1,), img.dtype)], axis=-1)


def over_grey(img: np.ndarray) -> np.ndarray:
    """Straight RGBA [0, 1] → RGB over mid grey (what a viewer compares)."""
    return img[..., :3] * img[..., 3:] + 0.5 * (1 - img[..., 3:])


# ------------------------------------------------------------------------------------------ network tensors (torch)


def to_net(images_u8: np.ndarray):
    """(B, H, W, 4) uint8 straight RGBA → (B, 4, H, W) premultiplied in [−1, 1]."""
    return float_to_net(images_u8.astype(np.float32) / np.float32(255))


def float_to_net(images: np.ndarray):
    """(B, H, W, 4) float straight RGBA in [0, 1] → (B, 4, H, W) premultiplied in [−1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).permute(0, 3, 1, 2)
    return torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1) * 2 - 1


def from_net(x) -> np.ndarray:
    """(B, 4, H, W) premultiplied [−1, 1] tensor → (B, H, W, 4) float32 straight RGBA in [0, 1]."""
    y = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return unpremultiply(y)
