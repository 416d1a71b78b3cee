"""Analytic test material for ResWarp: a richly textured procedural image and smooth warps known in closed form.

The texture is a sum of oriented sinusoids (wavelengths 4–300 px at 2K, scaled with the image) evaluated at pixel
centres, so the exactly warped image f(T(p)) is available at any resolution with no interpolation. Warps are backward
maps T (output position → input position) in normalised coordinates, so the same motion applies at every size.
"""

from __future__ import annotations

import numpy as np

WARPS = ("translation", "rotation", "squash", "bulge")


def _components(seed: int, n: int = 24):
    rng = np.random.default_rng(seed)
    # wavelengths as a fraction of the image width: 4 px … 300 px at 2048 wide
    wavelength = np.exp(rng.uniform(np.log(4 / 2048), np.log(300 / 2048), n))
    angle = rng.uniform(0, np.pi, n)
    phase = rng.uniform(0, 2 * np.pi, (n, 3))
    amp = rng.uniform(0.3, 1.0, (n, 3)) / np.sqrt(n)
    return wavelength, angle, phase, amp


def texture_at(x: np.ndarray, y: np.ndarray, width: int, seed: int = 0) -> np.ndarray:
    """The texture (values about 0.1–0.9, 3 channels, float32) at full-resolution pixel positions (x, y)."""
    wavelength, angle, phase, amp = _components(seed)
    u, v = (x / width).astype(np.float32), (y / width).astype(np.float32)
    out = np.full(x.shape + (3,), 0.5, np.float32)
    for i in range(len(wavelength)):
        k = np.float32(2 * np.pi / wavelength[i])
        arg = k * (np.float32(np.cos(angle[i])) * u + np.float32(np.sin(angle[i])) * v)
        for c in range(3):
            out[..., c] += np.float32(amp[i, c] * 0.4) * np.sin(arg + np.float32(phase[i, c]))
    return np.clip(out, 0, 1)


def backward_map(kind: str, x: np.ndarray, y: np.ndarray, width: int, height: int):
    """T(x, y): where output pixel (x, y) takes its content from, in the same pixel units."""
    s = min(width, height)
    cx, cy = width / 2, height / 2
    if kind == "translation":
        return x + 0.0043 * s, y - 0.0031 * s
    if kind == "rotation":
        a = np.deg2rad(3.0)
        dx, dy = x - cx, y - cy
        return cx + np.cos(a) * dx - np.sin(a) * dy, cy + np.sin(a) * dx + np.cos(a) * dy
    g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.12 * s) ** 2))
    if kind == "squash":  # an eye closing: content squeezed vertically toward the centre line
        return x, cy + (y - cy) * (1 + 0.6 * g)
    if kind == "bulge":
        return cx + (x - cx) * (1 - 0.35 * g), cy + (y - cy) * (1 - 0.35 * g)
    raise ValueError(f"unknown warp {kind!r} (one of {', '.join(WARPS)})")


def pixel_grid(height: int, width: int):
    return np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))


def case(kind: str, height: int, width: int, grid=(128, 128), seed: int = 0):
    """(source, exactly warped full-res image, low-res flow in keyface's convention), float32 in [0, 1]."""
    x, y = pixel_grid(height, width)
    source = texture_at(x, y, width, seed)
    tx, ty = backward_map(kind, x, y, width, height)
    target = texture_at(tx, ty, width, seed)
    del x, y, tx, ty
    gh, gw = grid
    sx, sy = width / gw, height / gh
    u, v = pixel_grid(gh, gw)
    px, py = (u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5  # low-res pixel centres in full-res pixels
    tx, ty = backward_map(kind, px, py, width, height)
    flow = np.stack([(tx + 0.5) / sx - 0.5 - u, (ty + 0.5) / sy - 0.5 - v], axis=-1).astype(np.float32)
    return source, target, flow
