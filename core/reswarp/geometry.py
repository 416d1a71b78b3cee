"""ResWarp's geometry, shared by the CPU (OpenCV) and torch back ends: the pyramid's level sizes, the half-pixel
up-sampling positions, the feather ramps, the strips level 0 is computed in, and the rectangles of active grid cells.
Pure numpy (see the package docstring for the conventions)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..box import Box
from ..errors import ResWarpError
from ..pixels import full_scale

MODES = ("multiscale", "vanilla")
INTERPS = ("linear", "cubic")
DEFAULT_GRID = (128, 128)  # (height, width)


def level_sizes(box_hw: tuple[int, int], grid_hw: tuple[int, int], mode: str) -> list[tuple[int, int]]:
    """Sizes (h, w) from the box (level 0) down to the grid (last level)."""
    if mode not in MODES:
        raise ResWarpError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    sizes = [tuple(box_hw)]
    if mode == "multiscale":
        while True:
            h, w = sizes[-1]
            nh, nw = (h + 1) // 2, (w + 1) // 2  # halve, rounding half up
            if nh < grid_hw[0] or nw < grid_hw[1]:
                break
            sizes.append((nh, nw))
    if sizes[-1] != tuple(grid_hw) or len(sizes) == 1:  # a box already at the grid size gets a zero residual
        sizes.append(tuple(grid_hw))
    return sizes


def scale_of(dtype) -> float:
    """Full intensity of a supported image dtype (uint8, uint16, floats); others are an error."""
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16) and not np.issubdtype(dtype, np.floating):
        raise ResWarpError(f"unsupported image type {dtype} (use uint8, uint16 or float)")
    return full_scale(dtype)


def check_image(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ResWarpError(f"{what} must be H×W×3 or H×W×4, got shape {img.shape}")
    scale_of(img.dtype)
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        raise ResWarpError(f"{what} contains NaN or inf")
    return img


def up_coords(n_out: int, n_in: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Input positions sampled by output pixels start..stop of an n_in → n_out bilinear up-sampling."""
    stop = n_out if stop is None else stop
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    return np.clip(pos, 0, n_in - 1).astype(np.float32)


def feather_ramps(box: Box, image_hw: tuple[int, int], feather: int) -> tuple[np.ndarray, np.ndarray]:
    """Compositing weights along y and x (the weight of a pixel is the smaller of its two): 1 inside, ramping to 0
    over ``feather`` pixels toward box edges that lie inside the image (edges on the image border get no ramp)."""
    def ramp(n, lo_inside, hi_inside):
        i = np.arange(n, dtype=np.float32) + 0.5
        r = np.ones(n, np.float32)
        if feather > 0 and lo_inside:
            r = np.minimum(r, i / feather)
        if feather > 0 and hi_inside:
            r = np.minimum(r, (n - i) / feather)
        return r

    H, W = image_hw
    return ramp(box.h, box.y > 0, box.y + box.h < H), ramp(box.w, box.x > 0, box.x + box.w < W)


def runs(mask: np.ndarray) -> list[slice]:
    """Contiguous runs of True in a 1-D mask, as slices."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [slice(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True)]


STRIP_PIXELS = 1 << 20  # level-0 pixels per strip: per-frame temporaries stay near 50 MB at any size


def strips(start: int, stop: int, width: int):
    step = max(1, STRIP_PIXELS // max(1, width))
    for r in range(start, stop, step):
        yield slice(r, min(stop, r + step))


def active_rects(active: np.ndarray, gap: int = 6) -> list[tuple[int, int, int, int]]:
    """Rectangles (r0, r1, c0, c1) of grid cells covering the active cells: one per cluster (an eye, the mouth),
    merged while any two come closer than ``gap`` cells, so that no rectangle's recomputed margin reads what another
    one changes."""
    if not active.any():
        return []
    n, labels = cv2.connectedComponents(active.astype(np.uint8), connectivity=8)
    rects = []
    for i in range(1, n):
        ys, xs = np.nonzero(labels == i)
        rects.append([ys.min(), ys.max() + 1, xs.min(), xs.max() + 1])
    merged = True
    while merged:
        merged = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if a[0] < b[1] + gap and b[0] < a[1] + gap and a[2] < b[3] + gap and b[2] < a[3] + gap:
                    rects[i] = [min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])]
                    del rects[j]
                    merged = True
                    break
            if merged:
                break
    return [tuple(int(v) for v in r) for r in rects]


def cells_to_pixels(c0: int, c1: int, n_grid: int, n: int) -> tuple[int, int]:
    """Pixels of a level of size n whose bilinear up-sampling reads grid cells in [c0, c1) (plus one cell margin)."""
    scale = n / n_grid
    return max(0, math.floor((c0 - 1) * scale)), min(n, math.ceil((c1 + 1) * scale))
