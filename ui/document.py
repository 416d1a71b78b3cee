"""The editor's document: one source image, a model, and the keyed timeline — i.e. a scene being edited.

Pure data plus Qt signals; every widget edits the document through these methods, so the Krita docker can reuse them.
Changing a parameter sets a key at the current frame (auto-key: a new key, or the existing key's value).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PyQt5.QtCore import QObject, pyqtSignal

from keyface.core.errors import KeyfaceError
from keyface.core.imageio import read_image
from keyface.core.models import available_models, get_model
from keyface.core.rig import get_schema
from keyface.core.scene import OutputSettings, Scene, load_scene, save_scene
from keyface.core.timeline import Key, Timeline, Track


class EditorDocument(QObject):
    changed = pyqtSignal()            # keys or settings changed (the timeline must be redrawn, previews redone)
    frameChanged = pyqtSignal(int)
    imageChanged = pyqtSignal()
    boxChanged = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.image: np.ndarray | None = None
        self.source_path: Path | None = None
        self.scene_path: Path | None = None
        self.model_id: str | None = None
        self.schema = get_schema("au17")
        self.timeline = Timeline(self.schema)
        self.fps = 24.0
        self.frame_range = (0, 47)
        self.face_box: tuple[int, int, int, int] | None = None
        self.output = OutputSettings()
        self.frame = 0
        self.dirty = False
        models = available_models()
        if models:
            self.set_model(models[0].id, mark_dirty=False)

    # loading / saving ----------------------------------------------------------------------------------------------
    def open_image(self, path) -> None:
        image = read_image(path)  # KeyfaceError on a bad file: the caller shows it
        self.image, self.source_path, self.scene_path = image, Path(path).resolve(), None
        self.timeline = Timeline(self.schema)
        self.face_box, self.frame, self.dirty = None, 0, False
        self.imageChanged.emit()
        self.changed.emit()
        self.frameChanged.emit(0)

    def open_scene(self, path) -> None:
        scene = load_scene(path)
        image = read_image(scene.source_path)
        self.image, self.source_path, self.scene_path = image, scene.source_path, Path(path).resolve()
        self.output = scene.output
        self.imageChanged.emit()
        self.load_state(scene.timeline, scene.face_box, scene.fps, scene.frame_range, scene.frame_range[0],
                        model_id=scene.model)

    def to_scene(self, base_dir: Path | None = None) -> Scene:
        if self.source_path is None:
            raise KeyfaceError("open an image first")
        base = base_dir or (self.scene_path.parent if self.scene_path else self.source_path.parent)
        try:
            source = str(self.source_path.relative_to(base))
        except ValueError:
            source = str(self.source_path)
        return Scene(source=source, schema=self.schema, timeline=self.timeline, model=self.model_id,
                     face_box=self.face_box, fps=self.fps, frame_range=self.frame_range, output=self.output,
                     base_dir=base)

    def save(self, path=None) -> Path:
        path = Path(path or self.scene_path or "")
        if not path.name:
            raise KeyfaceError("no file name to save to")
        save_scene(self.to_scene(path.resolve().parent), path)
        self.scene_path, self.dirty = path.resolve(), False
        self.changed.emit()
        return path

    # settings ------------------------------------------------------------------------------------------------------
    def set_model(self, model_id: str, mark_dirty: bool = True) -> None:
        info = get_model(model_id)
        if info.schema.name != self.schema.name:
            self.timeline = Timeline(info.schema)  # keys of another schema cannot carry over
        self.model_id, self.schema = model_id, info.schema
        self._touch(mark_dirty)

    def set_face_box(self, box) -> None:
        self.face_box = None if box is None else tuple(int(v) for v in box)
        self.boxChanged.emit()
        self._touch()

    def set_frame(self, frame: int) -> None:
        frame = int(min(max(frame, self.frame_range[0]), self.frame_range[1]))
        if frame != self.frame:
            self.frame = frame
            self.frameChanged.emit(frame)

    def set_range(self, first: int, last: int, mark_dirty: bool = True) -> None:
        if last < first:
            raise KeyfaceError("the last frame is before the first")
        self.frame_range = (int(first), int(last))
        self.set_frame(self.frame)
        self._touch(mark_dirty)

    def load_state(self, timeline: Timeline | None, face_box, fps: float, frame_range, frame: int,
                   model_id: str | None = None) -> None:
        """Replace the keys and settings at once (a scene opened, a host switched documents): the model (when given),
        the keys in their own schema (``None``: none, in the current schema), box, rate, range and current frame; not
        dirty; every signal fires."""
        if model_id is not None:
            self.set_model(model_id, mark_dirty=False)
        if timeline is not None:  # the keys keep their own schema (e.g. the character rig driving any model)
            self.schema, self.timeline = timeline.schema, timeline
        else:
            self.timeline = Timeline(self.schema)
        self.face_box = None if face_box is None else tuple(int(v) for v in face_box)
        self.fps, self.frame_range, self.dirty = float(fps), (int(frame_range[0]), int(frame_range[1])), False
        self.frame = int(frame)
        self.boxChanged.emit()
        self.changed.emit()
        self.frameChanged.emit(self.frame)

    def import_motion(self, timeline: Timeline, frames: int) -> None:
        """Keys read from a reference clip (in this document's schema) replace the keys of the channels they key,
        starting at the first frame of the range; the range grows to hold the clip."""
        if timeline.schema.name != self.schema.name:
            raise KeyfaceError(f"the motion's keys are in {timeline.schema.name}, the document's in {self.schema.name}")
        first = self.frame_range[0]
        for name, track in timeline.tracks.items():
            self.timeline.tracks[name] = Track([Key(k.frame + first, k.value, k.interpolation, k.handle_left,
                                                    k.handle_right) for k in track.keys], default=track.default)
        self.frame_range = (first, max(self.frame_range[1], first + frames - 1))
        self._touch()

    def _touch(self, mark_dirty: bool = True) -> None:
        if mark_dirty:
            self.dirty = True
        self.changed.emit()

    # values and keys -----------------------------------------------------------------------------------------------
    def values_at(self, frame: float | None = None) -> np.ndarray:
        return self.timeline.sample([self.frame if frame is None else frame])[0]

    def set_value(self, channel: str, value: float) -> None:
        """Auto-key: set the channel's key at the current frame (inserting one when there is none)."""
        self.timeline.insert_key(channel, self.frame, float(value))  # keeps an existing key's interpolation
        self._touch()

    def set_value_at(self, channel: str, frame: int, value: float) -> None:
        self.timeline.insert_key(channel, frame, float(value))
        self._touch()

    def reset_channel(self, channel: str) -> None:
        """Remove all of a channel's keys (it falls back to its default)."""
        self.timeline.tracks[channel] = Track(default=self.schema.channel(channel).default)
        self._touch()

    def reset_all(self) -> None:
        self.timeline = Timeline(self.schema)
        self._touch()

    def keys(self, channel: str) -> tuple[Key, ...]:
        return self.timeline.track(channel).keys

    def insert_key(self, channel: str, frame: int) -> None:
        value = float(self.timeline.sample([frame])[0][self.schema.index(channel)])
        self.timeline.insert_key(channel, frame, value)
        self._touch()

    def delete_keys(self, keys: list[tuple[str, int]]) -> None:
        for channel, frame in keys:
            self.timeline.delete_key(channel, frame)
        self._touch()

    def move_keys(self, keys: list[tuple[str, int]], delta: int) -> list[tuple[str, int]]:
        """Move keys by ``delta`` frames (all or none: a move onto another key of the same channel is refused)."""
        if not delta:
            return keys
        moving = set(keys)
        for channel, frame in keys:
            target = self.timeline.track(channel).key_at(frame + delta)
            if target is not None and (channel, frame + delta) not in moving:
                raise KeyfaceError(f"{channel} already has a key at frame {frame + delta}")
        order = sorted(keys, key=lambda k: k[1], reverse=delta > 0)
        for channel, frame in order:
            self.timeline.move_key(channel, frame, frame + delta)
        self._touch()
        return [(c, f + delta) for c, f in keys]

    def set_interpolation(self, keys: list[tuple[str, int]], interpolation: str) -> None:
        for channel, frame in keys:
            self.timeline.track(channel).update(frame, interpolation=interpolation)
        self._touch()

    def set_handles(self, channel: str, frame: int, left=None, right=None) -> None:
        fields = {}
        if left is not None:
            fields["handle_left"] = tuple(left)
        if right is not None:
            fields["handle_right"] = tuple(right)
        self.timeline.track(channel).update(frame, **fields)
        self._touch()

    def copy_keys(self, keys: list[tuple[str, int]]) -> list[tuple[str, int, Key]]:
        if not keys:
            return []
        first = min(f for _, f in keys)
        return [(c, f - first, self.timeline.track(c).key_at(f)) for c, f in keys]

    def paste_keys(self, clip: list[tuple[str, int, Key]], at: int) -> None:
        for channel, offset, key in clip:
            if channel not in self.schema.names:
                continue
            self.timeline.insert_key(channel, at + offset, key.value, key.interpolation,
                                     handle_left=key.handle_left, handle_right=key.handle_right)
        self._touch()
