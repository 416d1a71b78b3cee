"""Image quality metrics, written once: PSNR and SSIM (numpy, images in [0, 1] unless a peak is given)."""

from __future__ import annotations

import math

import numpy as np


def psnr(a, b, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images). ``peak``: the range of the values (THA's [−1, 1]
    images: 2). Takes numpy arrays or torch tensors."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    else:
        mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Gaussian window σ = 1.5, per channel) of two images in [0, 1]."""
    import cv2

    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    a, b = a.astype(np.float64), b.astype(np.float64)
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return float(s.mean())


def image_metrics(out: np.ndarray, target: np.ndarray) -> dict:
    """MAE, MSE, PSNR (dB) and SSIM of two straight RGBA [0, 1] images compared as RGB over grey (how the methods'
    evaluations compare a frame with the engine's ground truth)."""
    from .pixels import over_grey

    a, b = over_grey(out), over_grey(target)
    mse = float(((a - b) ** 2).mean())
    return {"mae": float(np.abs(a - b).mean()), "mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-10)),
            "ssim": ssim(a, b)}


def mean_rows(rows: list[dict]) -> dict:
    """The mean of each field over rows of metrics."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def render_rows(model: str, data: dict, device: str = "cpu") -> dict:
    """A registered model through the render path on a dataset's pairs (``keyface synth``: ``rest``, ``posed``,
    ``values``, ``rest_face_box``, ``char_seed``): each character's rest image with its face box, the pose's
    character-rig values converted to the model's schema (what a converter drops is dropped), bias cancellation and
    ResWarp included; mean :func:`image_metrics` against the posed images."""
    from .models import get_model
    from .pipeline import FrameJob
    from .rig import convert

    runtime = get_model(model).load(device)
    rows = []
    for seed in np.unique(data["char_seed"]):
        idx = np.flatnonzero(data["char_seed"] == seed)
        job = FrameJob.prepare(data["rest"][idx[0]], runtime, tuple(int(v) for v in data["rest_face_box"][idx[0]]),
                               device)
        values = convert(data["values"][idx], "character", job.schema).astype(np.float32)
        for i, frame in zip(idx, job.frames(values), strict=True):
            rows.append(image_metrics(frame / 255.0, data["posed"][i] / 255.0))
    return mean_rows(rows)
