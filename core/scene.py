"""Scene files: a versioned JSON document that says what to animate, with what, and how to write it.

Example (the README documents every field)::

    {
      "keyface_scene": 1,
      "source": "character.png",
      "schema": "au17",
      "model": null,
      "face_box": [1700, 300, 512, 512],
      "fps": 24,
      "frame_range": [0, 47],
      "output": {"directory": "frames", "size": null, "format": "png", "bit_depth": 8, "reswarp": "multiscale"},
      "tracks": {
        "AU45": {"keys": [{"frame": 0, "value": 0}, {"frame": 6, "value": 5, "interpolation": "ease_in_out"},
                          {"frame": 12, "value": 0, "handles": {"left": [-2, 0]}}]}
      }
    }

The loader checks everything and reports every problem at once, each with its JSON path, e.g.
``tracks.AU12.keys[3].frame: expected an integer``. Paths inside the file (``source``, ``output.directory``) are
relative to the scene file's folder. ``save_scene`` writes atomically and round-trips exactly.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KeyfaceError, SceneError, TimelineError
from .io import atomic_write_text
from .models import get_model
from .rig import Schema, get_schema
from .timeline import INTERPOLATIONS, Key, Timeline, Track
from .video import MOVIE_FORMATS, check_quality

SCENE_VERSION = 1
FORMATS = {"png": (8, 16), "tiff": (8, 16, 32), "exr": (16, 32),  # image sequences, then movies (keyface.core.video)
           "mp4": (8,), "mov": (8, 16), "webm": (8,), "gif": (8,)}
RESWARP_MODES = ("multiscale", "vanilla")
_TOP = ("keyface_scene", "source", "schema", "model", "face_box", "source_fit", "fps", "frame_range", "output",
        "tracks")
_OUTPUT = ("directory", "size", "format", "bit_depth", "reswarp", "quality", "background")
_KEY = ("frame", "value", "interpolation", "handles")


@dataclass
class OutputSettings:
    directory: str = "frames"
    size: tuple[int, int] | None = None  # (width, height); None = the source's size
    format: str = "png"
    bit_depth: int = 8
    reswarp: str = "multiscale"
    quality: float | str | None = None  # a movie's quality (keyface.core.video: CRF, ProRes profile, GIF colours)
    background: tuple[int, int, int] = (255, 255, 255)  # mp4 and gif: transparency over this sRGB colour


@dataclass
class Scene:
    source: str  # as written in the file (relative to the scene's folder, or absolute)
    schema: Schema
    timeline: Timeline
    model: str | None = None
    face_box: tuple[int, int, int, int] | None = None  # x, y, width, height in source pixels
    source_fit: dict[str, float] | None = None  # the source's face-model fit (models that fit one, e.g. f3a-3dmm)
    fps: float = 24.0
    frame_range: tuple[int, int] = (0, 0)  # first and last frame, inclusive
    output: OutputSettings = field(default_factory=OutputSettings)
    base_dir: Path = field(default_factory=Path)  # the scene file's folder

    @property
    def source_path(self) -> Path:
        return (self.base_dir / self.source).resolve()

    @property
    def output_dir(self) -> Path:
        return (self.base_dir / self.output.directory).resolve()

    @property
    def frames(self) -> range:
        return range(self.frame_range[0], self.frame_range[1] + 1)

    def sample(self, frames=None, clip: bool = True):
        """``(F, C)`` channel values for ``frames`` (default: the scene's frame range)."""
        return self.timeline.sample(list(self.frames) if frames is None else frames, clip=clip)

    def to_json(self) -> dict:
        tracks = {}
        for name in self.schema.names:  # schema order: stable, diff-friendly files
            track = self.timeline.tracks.get(name)
            if track is None or not len(track):
                continue
            keys = []
            for k in track.keys:
                entry = {"frame": k.frame, "value": k.value, "interpolation": k.interpolation}
                handles = {s: list(h) for s, h in (("left", k.handle_left), ("right", k.handle_right)) if h}
                if handles:
                    entry["handles"] = handles
                keys.append(entry)
            tracks[name] = {"keys": keys}
        o = self.output
        return {
            "keyface_scene": SCENE_VERSION,
            "source": self.source,
            "schema": self.schema.name,
            "model": self.model,
            "face_box": list(self.face_box) if self.face_box else None,
            **({"source_fit": dict(self.source_fit)} if self.source_fit is not None else {}),
            "fps": self.fps,
            "frame_range": list(self.frame_range),
            "output": {"directory": o.directory, "size": list(o.size) if o.size else None, "format": o.format,
                       "bit_depth": o.bit_depth, "reswarp": o.reswarp, "quality": o.quality,
                       "background": list(o.background)},
            "tracks": tracks,
        }


class _Checker:
    """Collects (json_path, message) problems while reading a parsed document."""

    def __init__(self):
        self.errors: list[tuple[str, str]] = []

    def err(self, path: str, msg: str) -> None:
        self.errors.append((path, msg))

    def fields(self, obj, path: str, allowed, required=()) -> bool:
        if not isinstance(obj, dict):
            self.err(path, f"expected an object, got {_kind(obj)}")
            return False
        for name in obj:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f" (allowed: {', '.join(allowed)})"
                self.err(_join(path, name), "unknown field" + hint)
        for name in required:
            if name not in obj:
                self.err(_join(path, name), "missing")
        return True

    def integer(self, value, path: str, minimum: int | None = None) -> int | None:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
        ):
            self.err(path, f"expected an integer, got {_kind(value)}")
            return None
        value = int(value)
        if minimum is not None and value < minimum:
            self.err(path, f"must be ≥ {minimum}, got {value}")
            return None
        return value

    def number(self, value, path: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.err(path, f"expected a number, got {_kind(value)}")
            return None
        if not math.isfinite(value):
            self.err(path, f"must be finite, got {value}")
            return None
        return float(value)

    def string(self, value, path: str) -> str | None:
        if not isinstance(value, str) or not value:
            self.err(path, f"expected a non-empty string, got {_kind(value)}")
            return None
        return value

    def choice(self, value, path: str, options) -> str | None:
        if value not in options:
            self.err(path, f"expected one of {', '.join(map(str, options))}, got {_kind(value)}")
            return None
        return value

    def int_list(self, value, path: str, n: int, minimum: int | None = None) -> tuple[int, ...] | None:
        if not isinstance(value, list) or len(value) != n:
            self.err(path, f"expected a list of {n} integers, got {_kind(value)}")
            return None
        items = [self.integer(v, f"{path}[{i}]", minimum) for i, v in enumerate(value)]
        return None if any(v is None for v in items) else tuple(items)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = json.dumps(value) if isinstance(value, (int, float, str)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def scene_from_json(doc, base_dir: Path | str = ".", source_name: str | None = None) -> Scene:
    """Build a :class:`Scene` from a parsed JSON document; raises :class:`SceneError` listing every problem."""
    c = _Checker()
    if not c.fields(doc, "", _TOP, required=("keyface_scene", "source", "tracks")):
        raise SceneError(c.errors, source_name)

    version = doc.get("keyface_scene")
    if "keyface_scene" in doc and version != SCENE_VERSION:
        c.err("keyface_scene", f"unsupported scene version {_kind(version)} (this keyface reads version "
                               f"{SCENE_VERSION})")
    source = c.string(doc["source"], "source") if "source" in doc else None

    model = doc.get("model")
    schema = None
    if model is not None:
        if c.string(model, "model"):
            try:
                schema = get_model(model).schema
            except KeyfaceError as e:
                c.err("model", str(e))
                model = None
        else:
            model = None
    if doc.get("schema") is not None:
        name = doc["schema"]
        if c.string(name, "schema"):
            try:
                declared = get_schema(name)
            except KeyfaceError as e:
                c.err("schema", str(e))
            else:  # tracks of any schema drive any model, converted through the character rig
                schema = declared
    elif schema is None and model is None and "model" not in [p for p, _ in c.errors]:
        c.err("schema", "missing (name the schema the tracks use, or a model)")

    face_box = None
    if doc.get("face_box") is not None:
        face_box = c.int_list(doc["face_box"], "face_box", 4, minimum=0)
        if face_box and (face_box[2] < 1 or face_box[3] < 1):
            c.err("face_box", f"width and height must be ≥ 1, got {list(face_box)}")
            face_box = None

    source_fit = None
    if doc.get("source_fit") is not None:
        sf = doc["source_fit"]
        if not isinstance(sf, dict) or not sf:
            c.err("source_fit", f"must be an object of channel → number (keyface fit3dmm --out), got {_kind(sf)}")
        else:
            source_fit = {}
            for name, value in sf.items():
                v = c.number(value, _join("source_fit", name))
                if v is not None:
                    source_fit[str(name)] = v
            if model is not None and not c.errors:  # (an unknown model is reported under "model")
                fit_schema = get_model(model).schema
                if set(source_fit) != set(fit_schema.names):
                    c.err("source_fit", f"the channels must be those of {fit_schema.name}, the model's schema")

    fps = 24.0
    if "fps" in doc:
        value = c.number(doc["fps"], "fps")
        if value is not None and not 0 < value <= 1000:
            c.err("fps", f"must be in (0, 1000], got {value:g}")
        elif value is not None:
            fps = value

    output = OutputSettings()
    if "output" in doc and c.fields(doc["output"], "output", _OUTPUT):
        o = doc["output"]
        if "directory" in o:
            output.directory = c.string(o["directory"], "output.directory") or output.directory
        if o.get("size") is not None:
            size = c.int_list(o["size"], "output.size", 2, minimum=1)
            output.size = size
        if "format" in o:
            output.format = c.choice(o["format"], "output.format", tuple(FORMATS)) or output.format
        if "bit_depth" in o:
            depth = c.integer(o["bit_depth"], "output.bit_depth")
            if depth is not None and depth not in FORMATS[output.format]:
                c.err("output.bit_depth", f"{output.format} supports bit depths "
                                          f"{', '.join(map(str, FORMATS[output.format]))}, got {depth}")
            elif depth is not None:
                output.bit_depth = depth
        elif output.bit_depth not in FORMATS[output.format]:
            output.bit_depth = FORMATS[output.format][0]
        if "reswarp" in o:
            output.reswarp = c.choice(o["reswarp"], "output.reswarp", RESWARP_MODES) or output.reswarp
        if o.get("background") is not None:
            output.background = c.int_list(o["background"], "output.background", 3, minimum=0) or output.background
            if max(output.background) > 255:
                c.err("output.background", f"an sRGB colour of 0–255 values, got {list(output.background)}")
        if o.get("quality") is not None:
            if output.format in MOVIE_FORMATS:
                try:
                    check_quality(output.format, o["quality"])
                    output.quality = o["quality"]
                except KeyfaceError as e:
                    c.err("output.quality", str(e))
            else:
                c.err("output.quality", f"quality is a movie setting; {output.format} frames have none")

    tracks = {}
    tracks_doc = doc.get("tracks")
    if "tracks" in doc and not isinstance(tracks_doc, dict):
        c.err("tracks", f"expected an object of channel tracks, got {_kind(tracks_doc)}")
    elif isinstance(tracks_doc, dict) and schema is not None:
        for name, tdoc in tracks_doc.items():
            if name not in schema:
                c.err(f"tracks.{name}", schema.unknown_message(name))
                continue
            track = _read_track(c, tdoc, f"tracks.{name}", schema, name)
            if track is not None:
                tracks[name] = track

    frame_range = None
    if "frame_range" in doc:
        fr = c.int_list(doc["frame_range"], "frame_range", 2)
        if fr and fr[1] < fr[0]:
            c.err("frame_range", f"last frame {fr[1]} is before first frame {fr[0]}")
        elif fr:
            frame_range = fr
    if frame_range is None:
        frames = sorted({k.frame for t in tracks.values() for k in t.keys}) or [0]
        frame_range = (frames[0], frames[-1])

    if c.errors:
        raise SceneError(c.errors, source_name)
    return Scene(source=source, schema=schema, timeline=Timeline(schema, tracks), model=model, face_box=face_box,
                 source_fit=source_fit, fps=fps, frame_range=frame_range, output=output, base_dir=Path(base_dir))


def _read_track(c: _Checker, tdoc, path: str, schema: Schema, name: str) -> Track | None:
    if not c.fields(tdoc, path, ("keys",), required=("keys",)) or "keys" not in tdoc:
        return None
    keys_doc = tdoc["keys"]
    if not isinstance(keys_doc, list):
        c.err(f"{path}.keys", f"expected a list of keys, got {_kind(keys_doc)}")
        return None
    ch = schema.channel(name)
    keys, seen, ok = [], {}, True
    for i, kd in enumerate(keys_doc):
        kp = f"{path}.keys[{i}]"
        n_before = len(c.errors)
        if not c.fields(kd, kp, _KEY, required=("frame", "value")):
            ok = False
            continue
        frame = c.integer(kd["frame"], f"{kp}.frame") if "frame" in kd else None
        value = c.number(kd["value"], f"{kp}.value") if "value" in kd else None
        if value is not None and not ch.min <= value <= ch.max:
            c.err(f"{kp}.value", f"{value:g} is outside {name}'s range [{ch.min:g}, {ch.max:g}]")
        interp = kd.get("interpolation", "bezier")
        c.choice(interp, f"{kp}.interpolation", INTERPOLATIONS)
        handles = {}
        if "handles" in kd and c.fields(kd["handles"], f"{kp}.handles", ("left", "right")):
            for side, sign in (("left", -1), ("right", 1)):
                h = kd["handles"].get(side)
                if h is None:
                    continue
                hp = f"{kp}.handles.{side}"
                if not isinstance(h, list) or len(h) != 2:
                    c.err(hp, f"expected [dframe, dvalue], got {_kind(h)}")
                    continue
                dx, dy = c.number(h[0], f"{hp}[0]"), c.number(h[1], f"{hp}[1]")
                if dx is not None and dx * sign < 0:
                    c.err(f"{hp}[0]", f"the {side} handle must point {'back' if sign < 0 else 'forward'} in time "
                                      f"(dframe {'≤' if sign < 0 else '≥'} 0), got {dx:g}")
                handles[f"handle_{side}"] = (dx, dy)
        if frame is not None and frame in seen:
            c.err(f"{kp}.frame", f"a key at frame {frame} already exists ({path}.keys[{seen[frame]}])")
        elif frame is not None:
            seen[frame] = i
        if len(c.errors) > n_before:
            ok = False
            continue
        try:
            keys.append(Key(frame, value, interp, **handles))
        except TimelineError as e:  # pragma: no cover - every case is checked above
            c.err(kp, str(e))
            ok = False
    return Track(keys, default=ch.default) if ok else None


def load_scene(path: str | Path) -> Scene:
    """Read and validate a scene file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SceneError([("", f"scene file not found: {path}")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError([("", f"cannot read scene file {path}: {e}")]) from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise SceneError([("", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")], str(path)) from None
    except ValueError as e:
        raise SceneError([("", str(e))], str(path)) from None
    return scene_from_json(doc, path.resolve().parent, str(path))


def _reject_constant(name: str):
    raise ValueError(f"not valid JSON: {name} is not a number in JSON")


def save_scene(scene: Scene, path: str | Path) -> None:
    """Write a scene atomically (a temporary file renamed over ``path``)."""
    atomic_write_text(path, json.dumps(scene.to_json(), indent=2, ensure_ascii=False) + "\n")


def check_source(scene: Scene) -> tuple[int, int]:
    """Open the source image's header; check the face box and output size fit. Returns (width, height)."""
    from PIL import Image, UnidentifiedImageError

    path = scene.source_path
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise SceneError([("source", f"image not found: {path}")]) from None
    except (UnidentifiedImageError, OSError) as e:
        raise SceneError([("source", f"cannot read image {path}: {e}")]) from None
    if scene.face_box:
        x, y, w, h = scene.face_box
        if x + w > width or y + h > height:
            raise SceneError([("face_box", f"box {list(scene.face_box)} does not fit the {width}×{height} source")])
    return width, height
