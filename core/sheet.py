"""Side-by-side comparison sheets: every painting in a folder, posed by each model with the same intents.

Each row is one painting (its face box, the same for every model: detected, or THA's for a 512² image); the
first column is the painting as it is, then one column per (model, intent), all cropped to the same region (the head:
twice the face box) and scaled to one tile size. Intents are given in the
character rig and converted to each model's schema, so every model is asked for the same thing (what a schema cannot
express is lost, as its converter says: ``keyface models --schema NAME``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .box import Box
from .errors import KeyfaceError
from .generator import default_face_box
from .imageio import read_image
from .pixels import over_grey, quantise, to_unit, with_alpha
from .rig import character_schema, convert

INTENTS = {"blink": {"blink_left": 1.0, "blink_right": 1.0}, "open mouth": {"mouth_open": 1.0},
           "smile": {"mouth_smile": 1.0, "eye_smile_left": 0.5, "eye_smile_right": 0.5},
           "head turn": {"head_yaw": 15.0}}
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".exr")


def intent_values(names) -> np.ndarray:
    """(len(names), C) character-rig values for the named intents."""
    rig = character_schema()
    rows = []
    for name in names:
        if name not in INTENTS:
            raise KeyfaceError(f"unknown intent {name!r} (known: {', '.join(INTENTS)})")
        v = rig.defaults.astype(np.float64).copy()
        for channel, value in INTENTS[name].items():
            v[rig.index(channel)] = value
        rows.append(v)
    return np.stack(rows)


def _tile(frame: np.ndarray, region, size: int) -> np.ndarray:
    """The region of a frame (padded with transparency where it leaves the frame) over grey, size² RGB float."""
    import cv2

    img = with_alpha(to_unit(frame))
    h, w = img.shape[:2]
    x, y, s = region.x, region.y, region.w
    canvas = np.zeros((s, s, 4), np.float32)
    ys, xs = slice(max(0, y), min(h, y + s)), slice(max(0, x), min(w, x + s))
    canvas[ys.start - y:ys.stop - y, xs.start - x:xs.stop - x] = img[ys, xs]
    return cv2.resize(over_grey(canvas), (size, size), interpolation=cv2.INTER_AREA)


def head_region(face: Box) -> Box:
    """The head and its hair: twice the face box, a little below its centre (what the sheets show)."""
    s = max(face.w, face.h)
    return Box(int(round(face.x - s / 2)), int(round(face.y - s / 4)), 2 * s, 2 * s)


def comparison_sheet(folder, models: list[str], intents=tuple(INTENTS), size: int = 192, device: str = "cpu",
                     progress: Callable | None = None) -> np.ndarray:
    """The sheet (uint8 RGB): a row per painting in ``folder``, columns: the painting, then each model × intent."""
    from .models import get_model
    from .pipeline import FrameJob

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise KeyfaceError(f"no images in {folder}")
    runtimes = {m: get_model(m).load(device) for m in models}
    values = intent_values(intents)
    rows, done = [], 0
    for path in paths:
        source = read_image(path)
        face = default_face_box(source)
        region = head_region(face)
        row = [_tile(source, region, size)]
        for model in models:
            job = FrameJob.prepare(source, runtimes[model], face, device)
            frames = job.frames(convert(values, "character", job.schema).astype(np.float32))
            row += [_tile(f, region, size) for f in frames]
            done += 1
            if progress:
                progress(done, len(paths) * len(models))
        rows.append(np.concatenate(row, axis=1))
    return quantise(np.concatenate(rows, axis=0))


def interpolation_strip(image, models: list[str], target: np.ndarray, frames: int = 8, size: int = 160,
                        face_box=None, device: str = "cpu") -> np.ndarray:
    """Key-to-key continuity (seed 002's continuous generation): one row per model, the source then ``frames`` frames
    from the rest pose to ``target`` (character-rig values), interpolated linearly *in each model's own schema* (for a
    3DMM model: linearly in its parameters, the paper's argument for continuity). Returns uint8 RGB."""
    from .models import get_model
    from .pipeline import FrameJob

    if frames < 2:
        raise KeyfaceError("a strip needs at least 2 frames")
    source = read_image(image)
    face = default_face_box(source) if face_box is None else Box.of(face_box)
    region = head_region(face)
    t = np.linspace(0.0, 1.0, frames, dtype=np.float64)[:, None]
    rows = []
    for model in models:
        job = FrameJob.prepare(source, get_model(model).load(device), face, device)
        rest = job.schema.defaults.astype(np.float64)
        goal = convert(np.asarray(target, np.float64), "character", job.schema)
        values = (rest + t * (goal - rest)).astype(np.float32)
        rows.append(np.concatenate([_tile(source, region, size)] + [_tile(f, region, size)
                                                                     for f in job.frames(values)], axis=1))
    return quantise(np.concatenate(rows, axis=0))


def scene_strip(image, models: list[str], scene, frames: int = 8, size: int = 160, face_box=None,
                device: str = "cpu", reference: list[np.ndarray] | None = None, reference_box=None) -> np.ndarray:
    """A scene's motion on one image, one row per model: the scene's keys sampled at ``frames`` frames evenly over
    its range, converted from the scene's schema to each model's (through the character rig). With ``reference`` (a
    clip's frames, e.g. the one the keys were read from) its frames at the same times make the first row, cropped
    around ``reference_box`` (default: its first frame's face box). Returns uint8 RGB."""
    from .models import get_model
    from .pipeline import FrameJob

    if frames < 2:
        raise KeyfaceError("a strip needs at least 2 frames")
    source = read_image(image)
    face = default_face_box(source) if face_box is None else Box.of(face_box)
    region = head_region(face)
    times = np.unique(np.round(np.linspace(scene.frame_range[0], scene.frame_range[1], frames)).astype(int))
    values = scene.sample(times)
    blank = np.full((size, size, 3), 0.5, np.float32)
    rows = []
    if reference is not None:
        ref_face = default_face_box(reference[0]) if reference_box is None else Box.of(reference_box)
        ref_region = head_region(ref_face)
        rows.append(np.concatenate([blank] + [_tile(reference[min(int(t), len(reference) - 1)], ref_region, size)
                                              for t in times], axis=1))
    for model in models:
        job = FrameJob.prepare(source, get_model(model).load(device), face, device)
        vals = convert(values, scene.schema, job.schema).astype(np.float32)
        rows.append(np.concatenate([_tile(source, region, size)] + [_tile(f, region, size) for f in job.frames(vals)],
                                   axis=1))
    return quantise(np.concatenate(rows, axis=0))
