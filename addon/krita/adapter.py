"""Krita ↔ keyface without importing ``krita``: everything the docker does to a document, written against the few
libkis calls it needs (Document, Node, Selection), so it is tested with a small fake in ``tests/``.

Facts about Krita 5.1 this relies on (checked in the real application, see ``../shared/hosts/KRITA.md``):

- ``Node.pixelData(x, y, w, h)`` returns the layer's pixels as bytes, channel order **BGRA** for RGBA layers, 1 byte
  per channel for U8 and 2 (native endian) for U16, straight (not premultiplied) alpha.
- libkis has no keyframe API. ``Document.importAnimation(files, first_frame, step)`` (full GUI only) adds a *new*
  animated paint layer with one keyframe per file from ``first_frame`` (plus an empty keyframe at 0) and leaves
  every other layer alone: that is how rendered frames enter the document.
- ``Document.setAnnotation(type, description, bytes)`` is saved in the ``.kra`` and restored on open: the docker's
  keyframes and settings live there, as JSON (:func:`state_to_bytes`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from keyface.core.box import Box
from keyface.core.errors import KeyfaceError
from keyface.core.pipeline import frame_name
from keyface.core.scene import OutputSettings, Scene, scene_from_json

ANNOTATION = "keyface"
STATE_VERSION = 1
DEPTHS = {"U8": np.uint8, "U16": np.uint16}
LAYER_PREFIX = "keyface"


@dataclass
class DockerSettings:
    """What the docker remembers besides the keys (stored with them in the document)."""

    layer: str = ""          # uniqueId of the source layer; "" = the active layer at render time
    box_from: str = "auto"   # "selection" (the box was taken from a selection; kept in the scene) or "auto"
    range_from: str = "keys"  # "keys": first to last key; "document": the document's playback range
    device: str = "cpu"
    movie: str = ""          # also export the render as a movie: "mp4", "mov", "webm", "gif", or "" (none)
    scheduler: str = ""      # a Dask scheduler's address (tcp://HOST:8786) to render on, or "" (this machine)


# ------------------------------------------------------------------------------------------------------ pixels


def check_layer(node) -> type:
    """The numpy dtype of a layer keyface can read, or a KeyfaceError saying why not."""
    if node is None:
        raise KeyfaceError("no layer selected: pick a paint layer to animate")
    if node.type() not in ("paintlayer",):
        raise KeyfaceError(f"layer {node.name()!r} is a {node.type()}: keyface animates paint layers")
    if node.colorModel() != "RGBA":
        raise KeyfaceError(f"layer {node.name()!r} is {node.colorModel()}/{node.colorDepth()}: keyface needs RGB/Alpha "
                           "(Image → Convert Image Color Space… → RGB/Alpha)")
    depth = node.colorDepth()
    if depth not in DEPTHS:
        raise KeyfaceError(f"layer {node.name()!r} has {depth} channels: keyface reads 8- and 16-bit integer layers "
                           "(Image → Convert Image Color Space… → 8 or 16 bit integer)")
    return DEPTHS[depth]


def bgra_bytes_to_rgba(data: bytes, width: int, height: int, dtype) -> np.ndarray:
    arr = np.frombuffer(bytes(data), dtype=dtype)
    if arr.size != width * height * 4:
        raise KeyfaceError(f"Krita returned {arr.size} values for a {width}×{height} RGBA layer")
    return arr.reshape(height, width, 4)[..., [2, 1, 0, 3]].copy()


def rgba_to_bgra_bytes(img: np.ndarray) -> bytes:
    return np.ascontiguousarray(img[..., [2, 1, 0, 3]]).tobytes()


def read_layer(doc, node) -> np.ndarray:
    """The layer at full document resolution, (H, W, 4) straight RGBA in the layer's depth. Read only."""
    dtype = check_layer(node)
    w, h = doc.width(), doc.height()
    return bgra_bytes_to_rgba(node.pixelData(0, 0, w, h), w, h, dtype)


# ------------------------------------------------------------------------------------------------------ boxes / ranges


def square_box(x: int, y: int, w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The square face box on a rectangle (a selection's bounds): same centre, side = the longer edge, moved (not
    shrunk) to stay inside the image; shrunk only when the image is smaller than the side."""
    if w < 1 or h < 1:
        raise KeyfaceError("the selection is empty")
    b = Box.square(x + w / 2, y + h / 2, max(w, h), width, height)
    return b.x, b.y, b.w, b.h


def selection_box(doc) -> tuple[int, int, int, int]:
    sel = doc.selection()
    if sel is None or sel.width() < 1 or sel.height() < 1:
        raise KeyfaceError("nothing is selected: select the face (any selection tool), then press “From selection”")
    return square_box(sel.x(), sel.y(), sel.width(), sel.height(), doc.width(), doc.height())


def keyed_range(timeline) -> tuple[int, int] | None:
    frames = [k.frame for track in timeline.tracks.values() for k in track.keys]
    return (min(frames), max(frames)) if frames else None


def render_range(editor, settings: DockerSettings, doc) -> tuple[int, int]:
    if settings.range_from == "document":
        first, last = doc.fullClipRangeStartTime(), doc.fullClipRangeEndTime()
    else:
        span = keyed_range(editor.timeline)
        if span is None:
            raise KeyfaceError("no keys yet: set a parameter at a frame to key it")
        first, last = span
    if first < 0:
        raise KeyfaceError(f"frame {first} is before the document's first frame (0)")
    return int(first), int(last)


# ------------------------------------------------------------------------------------------------------ state


def state_to_bytes(editor, settings: DockerSettings) -> bytes:
    """The docker's state (model, schema, face box, keys, settings) as JSON for the document's annotation."""
    scene = Scene(source="(krita layer)", schema=editor.schema, timeline=editor.timeline, model=editor.model_id,
                  face_box=editor.face_box, fps=editor.fps, frame_range=editor.frame_range)
    return json.dumps({"keyface_krita": STATE_VERSION, "scene": scene.to_json(), "docker": asdict(settings)},
                      indent=1).encode()


def state_from_bytes(data: bytes) -> tuple[Scene, DockerSettings]:
    """Parse an annotation written by :func:`state_to_bytes` (KeyfaceError with every problem when it is bad)."""
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyfaceError(f"the document's keyface data is not valid JSON ({exc}); it was left as is") from None
    if not isinstance(doc, dict) or doc.get("keyface_krita") != STATE_VERSION or "scene" not in doc:
        raise KeyfaceError("the document's keyface data has an unknown version; it was left as is")
    scene = scene_from_json(doc["scene"], source_name="the document's keyface data")
    fields = DockerSettings.__dataclass_fields__
    settings = DockerSettings(**{k: v for k, v in (doc.get("docker") or {}).items() if k in fields})
    return scene, settings


def load_state(editor, doc) -> DockerSettings:
    """Load a document's keyface state into the editor document (defaults when it has none)."""
    settings, scene = DockerSettings(), None
    data = doc.annotation(ANNOTATION) if ANNOTATION in list(doc.annotationTypes()) else None
    if data:
        scene, settings = state_from_bytes(data)
    editor.load_state(scene.timeline if scene else None, scene.face_box if scene else None,
                      doc.framesPerSecond(), (doc.fullClipRangeStartTime(), doc.fullClipRangeEndTime()),
                      doc.currentTime(), model_id=scene.model if scene else None)
    return settings


def store_state(editor, settings: DockerSettings, doc) -> None:
    doc.setAnnotation(ANNOTATION, "keyface keyframes and settings", state_to_bytes(editor, settings))


# ------------------------------------------------------------------------------------------------------ rendering


@dataclass
class RenderPlan:
    """One render of a layer: the pixels (a copy; the layer is never written), the scene, and where frames go."""

    source: np.ndarray
    scene: Scene
    out_dir: Path
    first: int
    last: int
    layer_name: str

    @property
    def frames(self) -> list[int]:
        return list(range(self.first, self.last + 1))

    @property
    def files(self) -> list[Path]:
        return [self.out_dir / frame_name(f, "png") for f in self.frames]


def cache_root() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keyface" / "krita"


def adapt_folder(doc, model_id: str, cache: Path | None = None) -> Path:
    """Where *Adapt to this character* writes the adapted model: beside a saved document
    (``<name>-<model>-adapted``), in keyface's cache for an unsaved one (named by the time)."""
    import time

    name, base = doc.fileName(), model_id.split(":")[0]
    if name:
        return Path(name).parent / f"{Path(name).stem}-{base}-adapted"
    return (cache or cache_root()) / "adapted" / f"untitled-{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def plan_render(doc, node, editor, settings: DockerSettings, cache: Path | None = None) -> RenderPlan:
    """Everything checked before the background work starts. Frames go to a folder named by a hash of the pixels and
    the scene, so a cancelled or failed render resumes where it stopped."""
    if editor.model_id is None:
        raise KeyfaceError("no model installed (`keyface models` lists them)")
    source = read_layer(doc, node)
    first, last = render_range(editor, settings, doc)
    box = editor.face_box
    if settings.box_from == "selection" and box is None:
        raise KeyfaceError("the face box should come from a selection, but none was taken")
    bits = 16 if source.dtype == np.uint16 else 8
    scene = Scene(source="(krita layer)", schema=editor.schema, timeline=editor.timeline, model=editor.model_id,
                  face_box=box, fps=float(doc.framesPerSecond()), frame_range=(first, last),
                  output=OutputSettings(format="png", bit_depth=bits))
    digest = hashlib.sha1(source.tobytes())
    digest.update(json.dumps(scene.to_json(), sort_keys=True).encode())
    out_dir = (cache or cache_root()) / digest.hexdigest()[:20]
    return RenderPlan(source, scene, out_dir, first, last, node.name())


def import_frames(doc, plan: RenderPlan) -> object:
    """Add the rendered frames to the document as a NEW animated layer (its first keyframe at ``plan.first``), named
    after the source layer. Returns the new node. The rendered files are deleted once Krita holds them."""
    files = plan.files
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise KeyfaceError(f"{len(missing)} rendered frame(s) are missing, e.g. {missing[0]}")
    before = {str(n.uniqueId()) for n in all_nodes(doc.rootNode())}
    if not doc.importAnimation([str(p) for p in files], plan.first, 1):
        raise KeyfaceError("Krita refused to import the rendered frames (see Krita's log)")
    new = [n for n in all_nodes(doc.rootNode()) if str(n.uniqueId()) not in before]
    if not new:
        raise KeyfaceError("Krita imported the frames but no new layer appeared")
    layer = new[0]
    layer.setName(f"{LAYER_PREFIX}: {plan.layer_name} {plan.first}–{plan.last}")
    shutil.rmtree(plan.out_dir, ignore_errors=True)
    return layer


def movie_target(doc, plan: RenderPlan, fmt: str) -> Path:
    """Where a render's movie goes: beside the document's file, named after it, the layer and the frames."""
    from keyface.core.video import movie_format

    name = doc.fileName()
    if not name:
        raise KeyfaceError("save the document first: the movie is written beside it")
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{Path(name).stem}_{plan.layer_name}")
    return Path(name).parent / f"{stem}_{plan.first}-{plan.last}{movie_format(fmt).extension}"


def export_movie(doc, plan: RenderPlan, fmt: str) -> Path:
    """Encode the rendered frames (before they are imported) into a movie beside the document (written atomically;
    mp4 and gif over white, mov and webm with alpha). Returns its path."""
    from keyface.core.imageio import read_image
    from keyface.core.video import write_movie

    missing = [str(p) for p in plan.files if not p.exists()]
    if missing:
        raise KeyfaceError(f"{len(missing)} rendered frame(s) are missing, e.g. {missing[0]}")
    return write_movie(movie_target(doc, plan, fmt), (read_image(p) for p in plan.files), fmt, plan.scene.fps)


def all_nodes(root) -> list:
    out = []
    for n in root.childNodes():
        out.append(n)
        out.extend(all_nodes(n))
    return out


def find_node(doc, unique_id: str):
    for n in all_nodes(doc.rootNode()):
        if str(n.uniqueId()) == unique_id:
            return n
    return None
