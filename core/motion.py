"""Motion from a reference clip (seed 003's purpose): a character video or a folder of frames → each frame's pose and
expression, relative to the first (neutral) frame, as the keys of a scene — reduced to the few that reproduce the
curves within a tolerance (:func:`keyface.core.timeline.reduce_curves`), so an artist can edit them.

Any model whose runtime extracts motion (``has_motion``: :meth:`keyface.core.generator.Generator.motion_keys`) can
read a reference: every frame is cropped to the model's working region around one face box (given, or the model's
default for the first frame), so the head's movement inside the region is part of the motion. The keys are in the
model's schema, smoothed over time (a Gaussian of ``smooth`` frames: per-frame detections jitter), then converted
through the character rig to the schema asked for (``kp`` as it is; ``character``, ``tha45``, ``au17`` keep what
their converters carry: see :mod:`keyface.core.rig`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .box import Box
from .errors import KeyfaceError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")


def read_reference(path, max_frames: int | None = None) -> tuple[list[np.ndarray], float | None]:
    """A reference clip's frames and frame rate: a movie (PyAV), or a folder of images taken in name order (no rate:
    ``None``). Every frame must have the first one's size."""
    from .imageio import read_image
    from .video import read_movie

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise KeyfaceError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        frames, fps = [read_image(f) for f in files[:max_frames]], None
    elif p.is_file():
        frames, rate = read_movie(p, max_frames)
        fps = float(rate)
    else:
        raise KeyfaceError(f"reference not found: {p}")
    size = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape[:2] != size:
            raise KeyfaceError(f"reference frame {i} is {f.shape[1]}×{f.shape[0]}, the first is {size[1]}×{size[0]}")
    return frames, fps


def reference_crops(runtime, frames: list[np.ndarray], face_box=None, progress: Callable | None = None,
                    should_stop: Callable = lambda: False) -> tuple[np.ndarray, Box]:
    """Every frame cropped to the model's region around one face box, at its grid size (straight RGBA [0, 1]).
    ``progress(done, total)`` after each frame; ``should_stop()`` cancels (a KeyfaceError)."""
    from .pipeline import FrameJob
    from .pixels import with_alpha

    face = Box.of(face_box) if face_box is not None else runtime.default_face_box(frames[0])
    crops = []
    for f in frames:
        if should_stop():
            raise KeyfaceError("cancelled")
        crops.append(with_alpha(FrameJob.prepare(f, runtime, face).lifter.low_input()))
        if progress:
            progress(len(crops), len(frames))
    return np.stack(crops).astype(np.float32), face


def reference_keys(runtime, frames: list[np.ndarray], face_box=None, smooth: float = 1.0,
                   progress: Callable | None = None, should_stop: Callable = lambda: False) -> np.ndarray:
    """(F, C) values in the model's schema: each frame's motion relative to the first, smoothed over ``smooth``
    frames (σ of a Gaussian; 0: none). ``progress`` and ``should_stop`` as :func:`reference_crops`."""
    if not runtime.has_motion:
        raise KeyfaceError(f"{type(runtime).__name__} does not read motion from a reference (use a model such as "
                           "stylemap-kp)")
    crops, _ = reference_crops(runtime, frames, face_box, progress, should_stop)
    values = np.asarray(runtime.motion_keys(crops), np.float64)
    if smooth > 0 and len(values) > 1:
        from scipy.ndimage import gaussian_filter1d

        values = gaussian_filter1d(values, smooth, axis=0, mode="nearest")
    return values


def keys_to_scene(values: np.ndarray, model_schema: str, schema: str, tolerance: float, source: str, model: str,
                  fps: float = 24.0):
    """A scene of reduced keys (:func:`keyface.core.timeline.reduce_curves`) from per-frame values in the model's
    schema, converted to ``schema``; returns (scene, report)."""
    from .rig import convert, get_schema
    from .scene import Scene
    from .timeline import reduce_curves

    target = get_schema(schema)
    vals = np.asarray(values, np.float64) if schema == model_schema else convert(values, model_schema, schema)
    frames = np.arange(len(vals))
    timeline, report = reduce_curves(target, frames, vals, tolerance)
    scene = Scene(source=source, schema=target, timeline=timeline, model=model, fps=fps,
                  frame_range=(0, len(vals) - 1))
    return scene, report
