"""Blender ↔ keyface without importing ``bpy``: keyframes as plain data, the per-frame values a render uses, the
frames folder next to the ``.blend`` and the background render task. The add-on (:mod:`.addon`) moves data between
these and Blender's F-curves; everything here is tested without Blender.

**Keys.** A Blender keyframe is described by :class:`BKey` (absolute handle positions, Blender's interpolation and
easing names). keyface's interpolations map onto Blender's exactly:

=============  ======================================================================================
keyface        Blender
=============  ======================================================================================
constant       CONSTANT
linear         LINEAR
ease_in        QUAD, easing EASE_IN  (Blender's quadratic ease-in is t²)
ease_out       QUAD, easing EASE_OUT (1 − (1 − t)²)
ease_in_out    BEZIER with both handles of the segment flat and one third of the gap long (t²(3 − 2t))
bezier         BEZIER with keyface's resolved handles (auto-clamped slopes or the key's own), FREE type
=============  ======================================================================================

Going back, a Blender segment that has none of these forms (SINE, BACK, ELASTIC, …, a key at a fractional frame or
outside the channel's range, an F-curve with modifiers) is *baked*: linear keys at every integer frame it spans, with
the values Blender evaluates there, so every rendered frame gets Blender's value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keyface.core.errors import KeyfaceError
from keyface.core.io import atomic_write_text
from keyface.core.pipeline import frame_name
from keyface.core.rig import Schema
from keyface.core.timeline import Key, Timeline, Track

PREFIX = "keyface_"  # Scene.keyface_<schema>: one PropertyGroup of keyable channels per schema
FLAT_TOL = 1e-6  # handle slope treated as flat (Blender stores float32)
THIRD_TOL = 1e-4  # handle length (fraction of the gap) treated as one third
FRAME_TOL = 1e-4  # a key this close to an integer frame is at that frame
MANIFEST = "keyface_frames.json"


def group_attr(schema_name: str) -> str:
    """The Scene attribute holding a schema's channels: ``keyface_au17``; ``3dmm:12x19`` → ``keyface_3dmm_12x19``."""
    return PREFIX + re.sub(r"\W", "_", schema_name)


def data_path(schema_name: str, channel: str) -> str:
    return f"{group_attr(schema_name)}.{channel}"


# ------------------------------------------------------------------------------------------------------ keys


@dataclass
class BKey:
    """One Blender keyframe: ``co`` (frame, value), absolute handle positions, Blender's enum names."""

    frame: float
    value: float
    interpolation: str = "BEZIER"
    easing: str = "AUTO"
    handle_left: tuple[float, float] = (0.0, 0.0)
    handle_right: tuple[float, float] = (0.0, 0.0)
    handle_left_type: str = "FREE"
    handle_right_type: str = "FREE"


TO_BLENDER = {"constant": ("CONSTANT", "AUTO"), "linear": ("LINEAR", "AUTO"), "ease_in": ("QUAD", "EASE_IN"),
              "ease_out": ("QUAD", "EASE_OUT"), "bezier": ("BEZIER", "AUTO"), "ease_in_out": ("BEZIER", "AUTO")}


def segment_handles(track: Track) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Per segment (key i → i+1), keyface's right handle of key i and left handle of key i+1 as (dframe, dvalue),
    resolved (auto handles computed) and corrected as keyface samples them (each clamped into the segment, then both
    shrunk when together longer than it), so Blender's own correction leaves them as they are."""
    x, _y, left, right, _modes = track._arrays()
    out = []
    for i in range(len(x) - 1):
        gap = x[i + 1] - x[i]
        hr, hl = np.array(right[i], float), np.array(left[i + 1], float)
        for h, lo, hi in ((hr, 0.0, gap), (hl, -gap, 0.0)):
            dx = min(max(h[0], lo), hi)
            if h[0] != 0:
                h *= dx / h[0]
        total = hr[0] - hl[0]
        if total > gap:
            hr *= gap / total
            hl *= gap / total
        out.append(((float(hr[0]), float(hr[1])), (float(hl[0]), float(hl[1]))))
    return out


def track_to_bkeys(track: Track) -> list[BKey]:
    """A keyface track as Blender keyframes that Blender evaluates to the same values."""
    keys = track.keys
    if not keys:
        return []
    handles = segment_handles(track)
    out = []
    for k in keys:
        interp, easing = TO_BLENDER[k.interpolation]
        out.append(BKey(float(k.frame), k.value, interp, easing))
    for i in range(len(keys)):  # default handles: flat, a third of the neighbouring gap (1 frame for a lone key)
        before = (keys[i].frame - keys[i - 1].frame) / 3 if i > 0 else None
        after = (keys[i + 1].frame - keys[i].frame) / 3 if i + 1 < len(keys) else None
        b = out[i]
        b.handle_left = (b.frame - (before or after or 1.0), b.value)
        b.handle_right = (b.frame + (after or before or 1.0), b.value)
    for i, ((rdx, rdy), (ldx, ldy)) in enumerate(handles):
        if keys[i].interpolation == "bezier":
            out[i].handle_right = (out[i].frame + rdx, out[i].value + rdy)
            out[i + 1].handle_left = (out[i + 1].frame + ldx, out[i + 1].value + ldy)
    return out


def _integral(x: float) -> int | None:
    r = round(x)
    return int(r) if abs(x - r) <= FRAME_TOL else None


def _flat_thirds(a: BKey, b: BKey) -> bool:
    gap = b.frame - a.frame
    scale = max(1.0, abs(a.value), abs(b.value))
    return (abs(a.handle_right[1] - a.value) <= FLAT_TOL * scale and abs(b.handle_left[1] - b.value) <= FLAT_TOL * scale
            and abs((a.handle_right[0] - a.frame) / gap - 1 / 3) <= THIRD_TOL
            and abs((b.frame - b.handle_left[0]) / gap - 1 / 3) <= THIRD_TOL)


def _blender_corrected(a: BKey, b: BKey):
    """The segment's handles as Blender evaluates them: pointing into the segment, both shrunk when together longer
    than it (Blender's correction of a Bézier segment), as (dframe, dvalue) offsets, a third snapped to exact."""
    gap = b.frame - a.frame
    r = [max(a.handle_right[0] - a.frame, 0.0), a.handle_right[1] - a.value]
    left = [min(b.handle_left[0] - b.frame, 0.0), b.handle_left[1] - b.value]
    total = r[0] - left[0]
    if total > gap:
        r = [r[0] * gap / total, r[1] * gap / total]
        left = [left[0] * gap / total, left[1] * gap / total]
    for h, sign in ((r, 1), (left, -1)):
        if abs(abs(h[0]) / gap - 1 / 3) <= THIRD_TOL and h[0] != 0:
            h[1] *= (gap / 3) / abs(h[0])
            h[0] = sign * gap / 3
    return tuple(r), tuple(left)


def mappable(a: BKey, b: BKey | None, lo: float, hi: float) -> str | None:
    """keyface's interpolation for the segment starting at ``a`` (``b``: the next key, None for the last), or None
    when it has no exact keyface form and must be baked."""
    if _integral(a.frame) is None or not lo <= a.value <= hi:
        return None
    if b is not None and (_integral(b.frame) is None or not lo <= b.value <= hi):
        return None
    kind = a.interpolation
    if kind == "CONSTANT":
        return "constant"
    if kind == "LINEAR":
        return "linear"
    if kind == "QUAD" and a.easing in ("AUTO", "EASE_IN"):
        return "ease_in"
    if kind == "QUAD" and a.easing == "EASE_OUT":
        return "ease_out"
    if kind == "BEZIER":
        return "ease_in_out" if b is not None and _flat_thirds(a, b) else "bezier"
    return None if b is not None else "linear"  # the last key's kind shapes nothing


def bkeys_to_track(bkeys: Sequence[BKey], evaluate: Callable[[float], float], lo: float, hi: float,
                   default: float = 0.0) -> Track:
    """Blender keyframes (sorted by frame) as a keyface track that samples to Blender's values at every integer
    frame: mappable segments keep their keys and interpolation, the others are baked (see the module docstring)."""
    specs: dict[int, tuple[float, str, tuple | None]] = {}  # frame → (value, interpolation, right handle)
    lefts: dict[int, tuple] = {}  # frame → left handle (set by the Bézier segment that ends there)
    n = len(bkeys)
    for i, a in enumerate(bkeys):
        b = bkeys[i + 1] if i + 1 < n else None
        kind = mappable(a, b, lo, hi)
        if kind is None:  # bake: linear keys at every integer frame of the segment, Blender's values
            start = (math.floor if i == 0 else math.ceil)(a.frame + (FRAME_TOL if i == 0 else -FRAME_TOL))
            stop = math.floor(b.frame + FRAME_TOL) if b is not None else start
            end = _integral(b.frame) if b is not None else None
            for f in range(start, stop + 1):
                if f == end:
                    break  # the next key starts its own segment
                specs[f] = (evaluate(f), "linear", None)
            continue
        frame = _integral(a.frame)
        if kind == "bezier" and b is not None:
            right, left = _blender_corrected(a, b)
            specs[frame] = (a.value, kind, right)
            lefts[_integral(b.frame)] = left
        else:
            specs[frame] = (a.value, kind, None)
    keys = [Key(f, min(max(float(v), lo), hi), kind, lefts.get(f), right)
            for f, (v, kind, right) in sorted(specs.items())]
    return Track(keys, default=default)


# ------------------------------------------------------------------------------------------------------ renders


def values_scene(schema: Schema, model: str, face_box, frames: Sequence[int], values: np.ndarray, fps: float,
                 source: str = "(blender image)", reswarp: str = "multiscale", bit_depth: int = 8):
    """A keyface scene whose timeline gives exactly ``values`` (F, C) at ``frames``: a constant key per frame and
    channel (the values Blender evaluated; clipped to the channels' ranges as Blender's properties are)."""
    from keyface.core.scene import OutputSettings, Scene

    values = np.clip(np.asarray(values, np.float64), schema.mins, schema.maxs)
    if values.shape != (len(frames), len(schema)):
        raise KeyfaceError(f"{values.shape} values for {len(frames)} frames of {len(schema)} channels")
    tracks = {}
    for c, ch in enumerate(schema.channels):
        column = values[:, c]
        if np.all(column == ch.default):
            continue
        tracks[ch.name] = Track([Key(int(f), float(v), "constant") for f, v in zip(frames, column, strict=True)],
                                default=ch.default)
    return Scene(source=source, schema=schema, timeline=Timeline(schema, tracks), model=model,
                 face_box=tuple(int(v) for v in face_box) if face_box is not None else None, fps=float(fps),
                 frame_range=(int(frames[0]), int(frames[-1])),
                 output=OutputSettings(format="png", bit_depth=bit_depth, reswarp=reswarp))


def frames_folder(blend_path: str | Path, scene_name: str) -> Path:
    """Where a scene's frames go: ``<blend folder>/<blend name>_keyface/<scene name>/``."""
    blend = Path(blend_path)
    safe = re.sub(r"[^\w.-]+", "_", scene_name).strip("._") or "scene"
    return blend.parent / f"{blend.stem}_keyface" / safe


def source_digest(source: np.ndarray) -> str:
    h = hashlib.sha1(str((source.shape, source.dtype.str)).encode())
    h.update(np.ascontiguousarray(source).data)
    return h.hexdigest()


def prepare_folder(folder: Path, setup: dict, frames: Sequence[int], values: np.ndarray) -> list[int]:
    """Make ``folder`` ready for a resumable render and return the frames still to render.

    ``folder/keyface_frames.json`` records what the frames there were rendered from (``setup``: source digest, model,
    face box, schema, …; and each frame's values). Frames rendered from other settings or other values are deleted
    (only keyface's own frame files), the record is rewritten for this render, and the frames on disk that match it
    are kept: a cancelled render resumes, a changed key re-renders only the frames it changes."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KeyfaceError(f"cannot create the frames folder {folder}: {e}") from None
    record_path = folder / MANIFEST
    old = {}
    if record_path.exists():
        try:
            old = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
    old_frames = old.get("frames", {}) if isinstance(old, dict) and old.get("setup") == setup else {}
    new_frames = {str(int(f)): [float(v) for v in row] for f, row in zip(frames, values, strict=True)}
    for path in folder.glob("frame_*.png"):
        key = path.stem[len("frame_"):].lstrip("0") or "0"
        if not re.fullmatch(r"-?\d+", key):
            continue
        key = str(int(key))
        if key not in new_frames or old_frames.get(key) != new_frames[key]:
            path.unlink()
    kept = {k: v for k, v in old_frames.items() if k not in new_frames}
    kept = {k: v for k, v in kept.items() if (folder / frame_name(int(k), "png")).exists()}
    atomic_write_text(record_path, json.dumps({"setup": setup, "frames": {**kept, **new_frames}}, indent=1))
    return [int(f) for f in frames if not (folder / frame_name(int(f), "png")).exists()]


@dataclass
class RenderTask:
    """A render running in a background thread, polled from Blender's UI (a modal operator's timer).

    ``done``/``total``: frames finished (kept ones included); ``error``: the exception that stopped it (a
    :class:`KeyfaceError` is the user's message); ``cancel()`` stops it after the current batch; the frames written
    so far stay (the next render resumes)."""

    scene: object
    folder: Path
    frames: list
    source: np.ndarray
    device: str = "cpu"
    done: int = 0
    total: int = 0
    error: BaseException | None = None
    written: list = field(default_factory=list)
    todo: list = field(default_factory=list)  # the frames not yet on disk when the render was planned
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def run(self) -> None:
        """Render in the calling thread (also what the background thread runs)."""
        from keyface.core.pipeline import render_scene

        self.total = len(self.frames)
        try:
            self.written = render_scene(self.scene, self.folder, self.frames, fmt="png", device=self.device,
                                        resume=True, progress=self._progress, should_stop=self._stop.is_set,
                                        source=self.source)
        except BaseException as e:  # reported by the UI; never raised into Blender's event loop
            self.error = e

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def start(self) -> RenderTask:
        self.total = len(self.frames)
        self._thread = threading.Thread(target=self.run, name="keyface-render", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def files(self) -> list[Path]:
        return [self.folder / frame_name(f, "png") for f in self.frames]
