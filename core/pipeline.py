"""The render spine every front end calls: scene → face box → crop at the generator's grid → generator (batched) →
ResWarp to the source resolution, in place → frames written atomically.

**Exact neutral.** A generator is run for the target values *and* for the source's own values (the rest pose: the
schema's defaults, e.g. all zeros for au17, eyes open for pose5), and only the difference is applied, in
premultiplied colour (so a generator's colour noise where it is nearly transparent cannot show):
result = input + (G(input, target) − G(input, rest)), flow = F(target) − F(rest). Frames whose values equal the rest
pose therefore reproduce the source exactly (bit-identical outside the box, ≤ 1/255 inside), and a generator's small
bias at rest never shows as flicker between keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import KeyfaceError
from .imageio import read_image, write_image
from .models import get_model
from .reswarp import Box, Lifter, ResWarpError
from .rig import convert, get_schema

EXTENSIONS = {"png": ".png", "tiff": ".tif", "exr": ".exr"}


def frame_name(frame: int, fmt: str) -> str:
    return f"frame_{frame:05d}{EXTENSIONS[fmt]}"


@dataclass
class FrameJob:
    """One source prepared for a model: call :meth:`frames` for any values."""

    source: np.ndarray
    box: Box
    runtime: object
    lifter: Lifter
    _rest: tuple | None = None

    @classmethod
    def prepare(cls, source: np.ndarray, model, box=None, device: str = "cpu", mode: str = "multiscale"):
        """``model``: a registered model id, or an already loaded runtime (grid, schema, __call__)."""
        runtime = get_model(model).load(device) if isinstance(model, str) else model
        h, w = source.shape[:2]
        if box is None and hasattr(runtime, "default_box"):  # e.g. THA4: the whole (square) character image
            box = runtime.default_box(source)
        if box is None:
            from .facebox import detect_face_box

            box = detect_face_box(source)
        box = box if isinstance(box, Box) else Box(*box)
        try:
            lifter = Lifter(source, box.check(w, h), grid=runtime.grid, mode=mode)
        except ResWarpError as exc:
            raise KeyfaceError(str(exc)) from None
        return cls(source, box, runtime, lifter)

    @property
    def schema(self):
        return get_schema(self.runtime.schema)

    def low_results(self, values: np.ndarray):
        """values (B, C) in the model's schema → (low results (B, h, w, 4) in the source's integer depth or float,
        flows (B, h, w, 2)), bias-cancelled against the rest pose."""
        results, flows, _ = self._generate(values)
        return results, flows

    def _generate(self, values: np.ndarray):
        """:meth:`low_results` plus the residual weights (B, h, w) when the generator gives them (None otherwise).
        A runtime returns (out, flow) or (out, flow, weight); weights are bias-cancelled like the rest:
        w = clip(1 + w(target) − w(rest), 0, 1), so the rest pose keeps every residual."""
        values = np.asarray(values, np.float32)
        low = self.lifter.low_input()
        if low.shape[2] == 3:
            low = np.concatenate([low, np.ones(low.shape[:2] + (1,), np.float32)], axis=2)
        rest_values = self.schema.defaults.astype(np.float32)  # the rest pose (e.g. pose5: eyes open = 1)
        if self._rest is None:  # the generator at the rest pose: computed once per job
            self._rest = self.runtime(low[None], rest_values[None])
        gen = self.runtime(np.repeat(low[None], len(values), axis=0), values)
        out, flow = gen[0], gen[1]
        result = _unpremultiply(_premultiply(low[None]) + _premultiply(out) - _premultiply(self._rest[0]))
        flows = flow - self._rest[1]
        weights = None
        if len(gen) > 2 and gen[2] is not None:
            weights = np.clip(1 + gen[2] - self._rest[2], 0, 1).astype(np.float32)
        rest_frames = (values == rest_values).all(axis=1)  # exactly the rest pose: exactly the source (no float noise)
        result[rest_frames] = low
        flows[rest_frames] = 0
        if weights is not None:
            weights[rest_frames] = 1
        if self.source.shape[2] == 3:
            result = result[..., :3]
        if np.issubdtype(self.source.dtype, np.integer):
            scale = np.iinfo(self.source.dtype).max
            result = np.clip(np.rint(result * scale), 0, scale).astype(self.source.dtype)
        return result, flows.astype(np.float32), weights

    def frames(self, values: np.ndarray) -> list[np.ndarray]:
        """Full-resolution frames for values (B, C) in the model's schema."""
        results, flows, weights = self._generate(values)
        if weights is None:
            return [self.lifter.lift(r, f) for r, f in zip(results, flows, strict=True)]
        return [self.lifter.lift(r, f, weight=w) for r, f, w in zip(results, flows, weights, strict=True)]


def _premultiply(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[..., :3] * x[..., 3:], x[..., 3:]], axis=-1)


def _unpremultiply(x: np.ndarray) -> np.ndarray:
    """Premultiplied → straight RGBA in [0, 1]; colour where alpha ≤ 1/1024 is meaningless and set to 0."""
    a = np.clip(x[..., 3:], 0, 1)
    rgb = np.where(a > 1 / 1024, x[..., :3] / np.maximum(a, 1 / 1024), 0)
    return np.clip(np.concatenate([rgb, a], axis=-1), 0, 1).astype(np.float32)


def _convert_depth(img: np.ndarray, bit_depth: int) -> np.ndarray:
    target = {8: np.uint8, 16: np.uint16}.get(bit_depth)
    if target is None or img.dtype == target:
        return img
    src_max = 1.0 if np.issubdtype(img.dtype, np.floating) else float(np.iinfo(img.dtype).max)
    dst_max = float(np.iinfo(target).max)
    return np.clip(np.rint(img.astype(np.float64) * (dst_max / src_max)), 0, dst_max).astype(target)


def render_scene(scene, out_dir=None, frames=None, fmt: str | None = None, device: str = "cpu",
                 resume: bool = False, batch: int = 4, progress: Callable | None = None,
                 should_stop: Callable = lambda: False, source: np.ndarray | None = None) -> list[Path]:
    """Render a scene's frames (default: its frame range) into ``out_dir`` (default: the scene's output folder).
    With ``resume``, frames already on disk are kept; without, an existing frame is an error (nothing is overwritten
    silently). ``source``: the source pixels when they do not come from the scene's file (a host's layer). Returns
    the written paths."""
    import cv2

    from .scene import check_source

    if scene.model is None:
        raise KeyfaceError("the scene names no model (set \"model\"; `keyface models` lists them)")
    fmt = fmt or scene.output.format
    if fmt not in EXTENSIONS:
        raise KeyfaceError(f"format {fmt!r} cannot be written here (use {', '.join(EXTENSIONS)})")
    if source is None:
        check_source(scene)
    out = Path(out_dir) if out_dir is not None else scene.output_dir
    out.mkdir(parents=True, exist_ok=True)
    frames = list(scene.frames if frames is None else frames)
    todo = []
    for f in frames:
        if (out / frame_name(f, fmt)).exists():
            if not resume:
                raise KeyfaceError(f"{out / frame_name(f, fmt)} exists: use --resume to keep finished frames, or "
                                   "another folder")
            continue
        todo.append(f)
    written = []
    if progress:
        progress(len(frames) - len(todo), len(frames))
    if not todo:
        return written
    if source is None:
        source = read_image(scene.source_path)
    job = FrameJob.prepare(source, scene.model, scene.face_box, device, scene.output.reswarp)
    values = convert(scene.sample(todo), scene.schema, job.schema)
    for i in range(0, len(todo), batch):
        if should_stop():
            break
        chunk = todo[i:i + batch]
        for f, img in zip(chunk, job.frames(values[i:i + batch]), strict=True):
            if scene.output.size and tuple(scene.output.size) != (img.shape[1], img.shape[0]):
                img = cv2.resize(img, tuple(scene.output.size), interpolation=cv2.INTER_AREA)
            path = out / frame_name(f, fmt)
            if fmt == "exr":  # linear half/float, premultiplied (bit_depth 16 or 32)
                write_image(path, img, exr_bits=scene.output.bit_depth if scene.output.bit_depth in (16, 32) else 16)
            else:
                write_image(path, _convert_depth(img, scene.output.bit_depth))
            written.append(path)
            if progress:
                progress(len(frames) - len(todo) + len(written), len(frames))
    return written
