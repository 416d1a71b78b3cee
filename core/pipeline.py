"""The render spine every front end calls: scene → face box → the generator's region at its grid → generator
(batched) → ResWarp to the source resolution, in place → frames (or a movie) written atomically.

**Exact neutral.** A generator is run for the target values *and* for the source's own values (the rest pose: the
schema's defaults, e.g. all zeros for au17, eyes open for pose5), and only the difference is applied, in
premultiplied colour (so a generator's colour noise where it is nearly transparent cannot show):
result = input + (G(input, target) − G(input, rest)), flow = F(target) − F(rest) — or, for generators that repaint
what they change (``residual = "gated"``, THA3), the gated form of :func:`gated`. Frames whose values equal the rest
pose are the source itself (copied: bit-identical), and near rest the cancellation brings the source back, so a
generator's small bias at rest never shows as flicker between keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .box import Box
from .errors import KeyfaceError
from .generator import Generated, Generator
from .imageio import read_image, write_image
from .io import folder_lock, remove_stale_temporaries
from .models import get_model
from .pixels import convert_depth, full_scale, premultiply, quantise, unpremultiply, with_alpha
from .reswarp import Lifter
from .rig import convert, get_schema

EXTENSIONS = {"png": ".png", "tiff": ".tif", "exr": ".exr"}  # image-sequence formats (movies: keyface.core.video)


def frame_name(frame: int, fmt: str) -> str:
    return f"frame_{frame:05d}{EXTENSIONS[fmt]}"


CANCELLED_ALPHA_EPS = 1 / 1024  # a bias-cancelled sum's alpha at or below this is cancellation noise: colour 0


@dataclass
class FrameJob:
    """One source prepared for a model: call :meth:`frames` for any values.

    ``face_box``: the face box used (given, or the generator's default); ``box``: the generator's working region
    derived from it (:meth:`keyface.core.generator.Generator.working_box`), which ResWarp lifts. A region that leaves
    the document (THA's frame around a face near the edge) sees transparent pixels there: the lift runs on the
    document padded with transparency and the frames are cropped back (``crop``), so the document itself is never
    moved and everything outside the region stays bit-identical."""

    source: np.ndarray
    face_box: Box
    box: Box
    runtime: Generator
    lifter: Lifter
    crop: tuple[slice, slice] | None = None  # the document inside the padded source the lifter works on
    _rest: Generated | None = None

    @classmethod
    def prepare(cls, source: np.ndarray, model, face_box=None, device: str = "cpu", mode: str = "multiscale",
                fit: dict | None = None):
        """``model``: a registered model id, or an already loaded :class:`~keyface.core.generator.Generator`.
        ``fit``: the source's face-model parameters by channel name (a scene's ``source_fit``), for models that fit
        one (``has_fit``), used instead of their own fit."""
        runtime = model if isinstance(model, Generator) else get_model(model).load(device)
        job = cls._prepare(source, runtime, face_box, mode)
        if fit is not None:
            if not runtime.has_fit:
                raise KeyfaceError("the scene stores a source_fit, but its model fits no face model (source_fit is "
                                   "for models such as f3a-3dmm)")
            schema = get_schema(runtime.schema)
            missing = [n for n in schema.names if n not in fit]
            if missing:
                raise KeyfaceError(f"source_fit lacks {', '.join(missing[:4])} (a fit in {schema.name} is needed)")
            runtime.use_fit(np.array([fit[n] for n in schema.names], np.float32), with_alpha(job.lifter.low_input()))
        return job

    @classmethod
    def _prepare(cls, source: np.ndarray, runtime: Generator, face_box, mode: str):
        face = runtime.default_face_box(source) if face_box is None else Box.of(face_box)
        if face.w < 1 or face.h < 1:
            raise KeyfaceError(f"the face box {tuple(face)} has no area: give its width and height in pixels")
        box = runtime.working_box(face, source)
        h, w = source.shape[:2]
        if box.w < 1 or box.h < 1 or box.x >= w or box.y >= h or box.x + box.w <= 0 or box.y + box.h <= 0:
            raise KeyfaceError(f"the model's region {tuple(box)} for the face box {tuple(face)} does not overlap the "
                               f"{w}×{h} document")
        top, left = max(0, -box.y), max(0, -box.x)
        bottom, right = max(0, box.y + box.h - h), max(0, box.x + box.w - w)
        if not (top or left or bottom or right):
            return cls(source, face, box, runtime, Lifter(source, box, grid=runtime.grid, mode=mode))
        padded = np.zeros((h + top + bottom, w + left + right, 4), source.dtype)
        inside = (slice(top, top + h), slice(left, left + w))
        padded[inside] = source if source.shape[2] == 4 else np.concatenate(
            [source, np.full((h, w, 1), full_scale(source.dtype), source.dtype)], axis=2)
        lifter = Lifter(padded, Box(box.x + left, box.y + top, box.w, box.h), grid=runtime.grid, mode=mode)
        return cls(source, face, box, runtime, lifter, inside)

    @property
    def schema(self):
        return get_schema(self.runtime.schema)

    def grid_to_document(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) points in the generator's grid pixels → document pixels (pixel centres at integers in both)."""
        pts = np.asarray(pts, np.float64)
        sx, sy = self.box.w / self.runtime.grid[1], self.box.h / self.runtime.grid[0]
        return np.stack([self.box.x + (pts[:, 0] + 0.5) * sx - 0.5, self.box.y + (pts[:, 1] + 0.5) * sy - 0.5], 1)

    def low_results(self, values: np.ndarray):
        """values (B, C) in the model's schema → (low results (B, h, w, 4) in the source's integer depth or float,
        flows (B, h, w, 2)), bias-cancelled against the rest pose."""
        results, flows, _ = self.generate(values)
        return results, flows

    def generate(self, values: np.ndarray):
        """:meth:`low_results` plus the residual weights (B, h, w) when the generator gives them (None otherwise),
        bias-cancelled like the rest: w = clip(1 + w(target) − w(rest), 0, 1), so the rest pose keeps every residual.
        A generator whose ``residual`` is ``"gated"`` gets :func:`gated` instead."""
        values = np.asarray(values, np.float32)
        low = with_alpha(self.lifter.low_input())
        rest_values = self.schema.defaults.astype(np.float32)  # the rest pose (e.g. pose5: eyes open = 1)
        if self._rest is None:  # the generator at the rest pose: computed once per job
            self._rest = self.runtime(low[None], rest_values[None])
        gen = self.runtime(np.repeat(low[None], len(values), axis=0), values)
        flows = gen.flow - self._rest.flow
        weights = None
        if self.runtime.residual == "gated":
            result, weights = gated(low, gen.out, self._rest.out, flows)
        else:
            result = unpremultiply(premultiply(low[None]) + premultiply(gen.out) - premultiply(self._rest.out),
                                   eps=CANCELLED_ALPHA_EPS)
            if gen.weight is not None:
                weights = np.clip(1 + gen.weight - self._rest.weight, 0, 1).astype(np.float32)
        rest_frames = (values == rest_values).all(axis=1)  # exactly the rest pose: exactly the source (no float noise)
        # unpremultiplying a nearly transparent sum gives colours far outside [0, 1]; integer sources are clipped by
        # their quantisation, float ones (32-bit documents) here
        result[~rest_frames] = np.clip(result[~rest_frames], 0, 1)
        result[rest_frames] = low
        flows[rest_frames] = 0
        if weights is not None:
            weights[rest_frames] = 1
        if self.lifter.channels == 3:
            result = result[..., :3]
        if np.issubdtype(self.source.dtype, np.integer):
            result = quantise(result, self.source.dtype)
        return result, flows.astype(np.float32), weights

    def frames(self, values: np.ndarray) -> list[np.ndarray]:
        """Full-resolution frames for values (B, C) in the model's schema."""
        return self.lift(*self.generate(values))

    def lift(self, results, flows, weights=None) -> list[np.ndarray]:
        """Full-resolution frames for :meth:`generate`'s results (in place, cropped back to the document)."""
        weights = [None] * len(results) if weights is None else weights
        frames = [self.lifter.lift(r, f, weight=w) for r, f, w in zip(results, flows, weights, strict=True)]
        if self.crop is not None:
            frames = [np.ascontiguousarray(f[self.crop][..., :self.source.shape[2]]) for f in frames]
        return frames


GATE_CHANGE = (0.03, 0.12)  # change (premultiplied, max over channels) over which the gate falls from 1 to 0
GATE_GROW = 5  # grid pixels: the gate's zeros are grown by this window (a changed feature's soft edges)


def warp_low(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(h, w, C) image read at x + flow (backward, grid pixels), bilinear, border replicate."""
    from .reswarp.cpu import sample, warp_maps

    h, w = flow.shape[:2]
    return sample(np.ascontiguousarray(img), *warp_maps(flow, (h, w), slice(0, h), slice(0, w)), "linear")


def gated(low: np.ndarray, out: np.ndarray, rest_out: np.ndarray, flows: np.ndarray):
    """Bias cancellation for generators that repaint what they change (THA3): ``residual = "gated"``.

    The generator's error at rest, ``low − G(rest)`` (what it cannot reproduce of the document), is carried with the
    motion like ResWarp's residual, and only where the generator did not paint new content: the **gate** is 1 where
    ``G(target)`` equals ``G(rest)`` moved by the flow (within :data:`GATE_CHANGE`) and 0 where it differs (an eye
    closing, the mouth opening, hair a turn reveals), its zeros grown by :data:`GATE_GROW`. So
    ``result = G(target) + gate · warp(low − G(rest))`` in premultiplied colour, and the gate is also ResWarp's residual
    weight: near rest the document comes back exactly (gate 1, G(target) ≈ G(rest)); where content is new, the
    generator's own pixels show and no ghost of the document's old detail is left (the additive ``low + G(target) −
    G(rest)`` keeps the open eye's edges over a closed one). Returns (results, weights)."""
    import cv2

    base, bias = premultiply(rest_out[0]), premultiply(low) - premultiply(rest_out[0])
    kernel = np.ones((GATE_GROW, GATE_GROW), np.uint8)
    results, weights = [], []
    for o, f in zip(premultiply(out), flows, strict=True):
        change = np.abs(o - warp_low(base, f)).max(axis=-1)
        lo, hi = GATE_CHANGE
        gate = cv2.erode(np.clip((hi - change) / (hi - lo), 0, 1).astype(np.float32), kernel)
        results.append(o + gate[..., None] * warp_low(bias, f))
        weights.append(gate)
    return unpremultiply(np.stack(results), eps=CANCELLED_ALPHA_EPS), np.stack(weights)


MAX_FRAMES = 1_000_000  # a longer frame range is a typo, not a render (it would only fill memory and disks)
BIT_DEPTHS = {8: np.uint8, 16: np.uint16}  # integer output depths; others (EXR's 16/32-bit float) are written as float


def movie_path(scene, out=None, fmt: str = "mp4") -> Path:
    """Where a movie render goes: ``out`` when it names a file with the format's extension, else
    ``<out or the scene's output folder>.<ext>`` (e.g. ``frames.mp4`` beside the ``frames`` folder)."""
    from .video import movie_format

    ext = movie_format(fmt).extension
    if out is not None and Path(out).suffix.lower() == ext:
        return Path(out)
    folder = Path(out) if out is not None else scene.output_dir
    return folder.with_name(folder.name + ext)


def render_scene(scene, out_dir=None, frames=None, fmt: str | None = None, device: str = "cpu",
                 resume: bool = False, batch: int | None = None, progress: Callable | None = None,
                 should_stop: Callable = lambda: False, source: np.ndarray | None = None, quality=None,
                 background=None, lock: bool = True) -> list[Path]:
    """Render a scene's frames (default: its frame range) into ``out_dir`` (default: the scene's output folder), or,
    for a movie format (mp4, mov, webm, gif: :mod:`keyface.core.video`), into one movie (:func:`movie_path`) that the
    frames stream into as they are rendered. With ``resume``, image frames already on disk are kept; without, an
    existing frame is an error (nothing is overwritten silently). A movie is written under a temporary name and
    renamed when complete: an interrupted movie render leaves nothing under the final name and restarts from its
    first frame (``resume`` does not apply). ``source``: the source pixels when they do not come from the scene's
    file (a host's layer). ``batch``: frames per generator call (default: the generator's own ``batch_size``).
    ``quality`` / ``background``: a movie's settings (default: the scene's ``output``). Image frames are rendered
    under :func:`keyface.core.io.folder_lock` (``lock``): a second render into the same folder is refused while the
    first runs, and temporaries a killed render left behind are removed before frames are written again. A caller
    that holds the lock itself (a distributed render's client) passes ``lock=False``. Returns the written paths."""
    from .scene import FORMATS, check_source
    from .video import MOVIE_FORMATS

    if scene.model is None:
        raise KeyfaceError("the scene names no model (set \"model\"; `keyface models` lists them)")
    fmt = fmt or scene.output.format
    if fmt not in FORMATS:
        raise KeyfaceError(f"format {fmt!r} cannot be written here (use {', '.join(FORMATS)})")
    movie = fmt in MOVIE_FORMATS
    if movie and resume:
        raise KeyfaceError("a movie render restarts from its first frame (--resume keeps image frames only)")
    if source is None:
        check_source(scene)
    frames = scene.frames if frames is None else frames
    if hasattr(frames, "__len__") and len(frames) > MAX_FRAMES:
        raise KeyfaceError(f"{len(frames):,} frames asked for (more than {MAX_FRAMES:,}, 11½ hours at 24 fps): check "
                           "the frame range")
    frames = list(frames)
    if movie:
        target = movie_path(scene, out_dir, fmt)
        if not target.parent.is_dir():
            raise KeyfaceError(f"output folder does not exist: {target.parent}")
        todo = frames
    else:
        out = Path(out_dir) if out_dir is not None else scene.output_dir
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyfaceError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
        if lock:
            with folder_lock(out):
                return render_scene(scene, out, frames, fmt, device, resume, batch, progress, should_stop, source,
                                    quality, background, lock=False)
        todo = []
        for f in frames:
            if (out / frame_name(f, fmt)).exists():
                if not resume:
                    raise KeyfaceError(f"{out / frame_name(f, fmt)} exists: use --resume to keep finished frames, or "
                                       "another folder")
                continue
            todo.append(f)
    if progress:
        progress(len(frames) - len(todo), len(frames))
    if not todo:
        return []
    if not movie:  # a killed render's half-written files of these frames (we hold the folder lock)
        remove_stale_temporaries(out, [frame_name(f, fmt) for f in todo])
    if source is None:
        source = read_image(scene.source_path)
    job = FrameJob.prepare(source, scene.model, scene.face_box, device, scene.output.reswarp, scene.source_fit)
    if movie:
        from .video import MovieWriter

        writer = MovieWriter(target, fmt, scene.fps, size=scene.output.size,
                             background=scene.output.background if background is None else background,
                             quality=scene.output.quality if quality is None else quality)
        try:
            depth = BIT_DEPTHS[scene.output.bit_depth]
            done = _render_frames(scene, job, todo, batch, should_stop,
                                  lambda f, img: writer.write(convert_depth(img, depth)),
                                  progress and (lambda n: progress(n, len(frames))))
        except BaseException:
            writer.abort()
            raise
        if done < len(todo):  # stopped: no movie
            writer.abort()
            return []
        return [writer.close()]
    written = []

    def write(f, img):
        path = out / frame_name(f, fmt)
        if fmt == "exr":  # linear half/float, premultiplied (bit_depth 16 or 32)
            write_image(path, img, exr_bits=scene.output.bit_depth if scene.output.bit_depth in (16, 32) else 16)
        else:
            write_image(path, convert_depth(img, BIT_DEPTHS.get(scene.output.bit_depth, img.dtype)))
        written.append(path)

    _render_frames(scene, job, todo, batch, should_stop, write,
                   progress and (lambda n: progress(len(frames) - len(todo) + n, len(frames))))
    return written


def _render_frames(scene, job: FrameJob, todo: list, batch: int | None, should_stop: Callable, write: Callable,
                   progress: Callable | None) -> int:
    """Render ``todo`` in batches, in order, handing each frame (at the output size) to ``write(frame, image)``;
    returns how many were written (fewer when ``should_stop`` said so).

    The generator runs the next batch while one background thread lifts the previous batch to full resolution,
    resizes and writes it (OpenCV, zlib and torch release the GIL): the lift and the encode overlap the generator
    instead of following it. One batch is in flight at a time (memory stays one batch of full-resolution frames), the
    frames are written in order, the values are the same as rendering one stage after the other, and an error in the
    thread is raised here. On a stop or an exception the batch in flight is finished (its frames are complete) before
    this returns."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    batch = batch or job.runtime.batch_size
    done = 0

    def finish(chunk, generated):
        nonlocal done
        for f, img in zip(chunk, job.lift(*generated), strict=True):
            if scene.output.size and tuple(scene.output.size) != (img.shape[1], img.shape[0]):
                img = cv2.resize(img, tuple(scene.output.size), interpolation=cv2.INTER_AREA)
            write(f, img)
            done += 1
            if progress:
                progress(done)

    with ThreadPoolExecutor(1, thread_name_prefix="keyface-lift") as pool:
        pending = None
        for i in range(0, len(todo), batch):
            if should_stop():
                break
            chunk = todo[i:i + batch]  # sampled per batch: memory does not grow with the range
            generated = job.generate(convert(scene.sample(chunk), scene.schema, job.schema))
            if pending is not None:
                pending.result()
            pending = pool.submit(finish, chunk, generated)
        if pending is not None:
            pending.result()
    return done
