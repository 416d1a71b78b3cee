"""The Blender side of keyface: properties, panels, operators. The only module (with the installed shim) that imports
``bpy``; the data logic it uses lives in :mod:`.bridge` (no ``bpy``).

- ``Scene.keyface``: settings (source Image, model, rig, face box, device, ResWarp mode), saved with the .blend.
- ``Scene.keyface_<schema>``: one PropertyGroup per schema, a FloatProperty per channel with its range, so every
  parameter is keyed with I / right-click and animated by Blender's F-curves (grouped by the rig's channel groups).
- Sidebar tab *keyface* in the Image Editor and the Sequencer; operators ``keyface.render`` (modal with a UI, a
  blocking ``execute`` headless), ``keyface.preview``, ``keyface.detect_face``, ``keyface.export_scene``,
  ``keyface.import_scene``.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from keyface.core.errors import KeyfaceError

from . import bridge

CATEGORY = "keyface"
SEQUENCE_STRIP = "keyface"  # name prefix of the Sequencer strip a render adds
PREVIEW_IMAGE = "keyface preview"

# ------------------------------------------------------------------------------------------------------ schemas


def _schemas() -> dict:
    """Every concrete schema keyface knows (and each installed model's), by name."""
    from keyface.core.models import available_models
    from keyface.core.rig import get_schema, schema_names

    out = {}
    for name in schema_names():
        try:
            out[name] = get_schema(name)
        except KeyfaceError:  # a family such as 3dmm:KxL is not a schema by itself
            continue
    for info in available_models():
        out.setdefault(info.schema_name, info.schema)
    return out


_MODEL_ITEMS: list = []  # Blender keeps pointers into enum item strings: the lists must outlive the callbacks
_RIG_ITEMS: list = []


def _model_items(self, context):
    from keyface.core.models import available_models

    items = [(m.id, m.id, m.description) for m in available_models()]
    _MODEL_ITEMS[:] = items or [("", "(no model installed)", "`keyface models` lists installed generators")]
    return _MODEL_ITEMS


def _model_get(self):
    ids = [i[0] for i in _model_items(self, None)]
    return ids.index(self.model_id) if self.model_id in ids else 0


def _model_set(self, index):
    ids = [i[0] for i in _model_items(self, None)]
    self.model_id = ids[index] if 0 <= index < len(ids) else ""


OWN_RIG = "MODEL"  # the rig item for the model's own schema (schema names are lower case)


def _rig_items(self, context):
    items = [(OWN_RIG, "Model's own", "Key the model's own parameters")]  # an empty identifier is a heading
    items += [(n, n, s.description or n) for n, s in sorted(_SCHEMAS.items())]
    _RIG_ITEMS[:] = items
    return _RIG_ITEMS


def _rig_get(self):
    ids = [i[0] for i in _rig_items(self, None)]
    return ids.index(self.rig_name or OWN_RIG) if (self.rig_name or OWN_RIG) in ids else 0


def _rig_set(self, index):
    ids = [i[0] for i in _rig_items(self, None)]
    chosen = ids[index] if 0 <= index < len(ids) else OWN_RIG
    self.rig_name = "" if chosen == OWN_RIG else chosen


class KEYFACE_PG_settings(bpy.types.PropertyGroup):
    image: PointerProperty(type=bpy.types.Image, name="Image", description="The painting to animate (any size, RGBA)")
    model_id: StringProperty(name="Model id", default="")
    model: EnumProperty(name="Model", items=_model_items, get=_model_get, set=_model_set,
                        description="The generator (keyface models lists them)")
    rig_name: StringProperty(name="Rig name", default="")
    rig: EnumProperty(name="Rig", items=_rig_items, get=_rig_get, set=_rig_set,
                      description="The parameters you key: the model's own, or another rig (converted for the model)")
    use_face_box: BoolProperty(name="Face box", default=False,
                               description="Use this face box; off: detect it automatically when rendering")
    box_x: IntProperty(name="X", min=0, default=0, description="Face box left edge (pixels from the left)")
    box_y: IntProperty(name="Y", min=0, default=0, description="Face box top edge (pixels from the top)")
    box_w: IntProperty(name="Width", min=1, default=512)
    box_h: IntProperty(name="Height", min=1, default=512)
    show_box: BoolProperty(name="Show box", default=True, description="Draw the face box over the image")
    device: EnumProperty(name="Device", items=[("cpu", "CPU", ""), ("auto", "Auto", "CUDA when available")])
    reswarp: EnumProperty(name="ResWarp", items=[("multiscale", "Multiscale", ""), ("vanilla", "Vanilla", "")])
    last_folder: StringProperty(name="Frames", default="", subtype="DIR_PATH",
                                description="Where the last render's frames are")


_SCHEMAS: dict = {}
_GROUP_CLASSES: list = []


def _group_class(name: str, schema):
    annotations = {ch.name: FloatProperty(name=ch.label or ch.name, description=ch.description or ch.name,
                                          min=ch.min, max=ch.max, soft_min=ch.min, soft_max=ch.max,
                                          default=ch.default, options={"ANIMATABLE"})
                   for ch in schema.channels}
    safe = bridge.group_attr(name)[len(bridge.PREFIX):]
    return type(f"KEYFACE_PG_rig_{safe}", (bpy.types.PropertyGroup,), {"__annotations__": annotations})


# ------------------------------------------------------------------------------------------------------ reading Blender


def settings_of(scene):
    return scene.keyface


def model_info(scene):
    from keyface.core.models import get_model

    settings = settings_of(scene)
    if not settings.model_id:  # nothing chosen yet: the picker shows the first installed model, so that one
        items = _model_items(settings, None)
        if not items[0][0]:
            raise KeyfaceError("no model is installed (`keyface models` lists the installed generators)")
        return get_model(items[0][0])
    return get_model(settings.model_id)


def rig_schema(scene):
    """The schema whose channels are keyed (the rig chosen, or the model's own)."""
    settings = settings_of(scene)
    if settings.rig_name:
        if settings.rig_name not in _SCHEMAS:
            raise KeyfaceError(f"rig {settings.rig_name!r} is unknown to this keyface")
        return _SCHEMAS[settings.rig_name]
    return model_info(scene).schema


def face_box(scene):
    s = settings_of(scene)
    return (s.box_x, s.box_y, s.box_w, s.box_h) if s.use_face_box else None


def fcurves(scene):
    """The scene's animation F-curves (the active action's; its slot's channelbag from Blender 4.4)."""
    ad = scene.animation_data
    if ad is None or ad.action is None:
        return []
    slot = getattr(ad, "action_slot", None)
    if slot is not None:
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(ad.action, slot)
        return list(bag.fcurves) if bag is not None else []
    return list(ad.action.fcurves)


def _fcurve_collection(scene):
    ad = scene.animation_data
    slot = getattr(ad, "action_slot", None)
    if slot is not None:
        from bpy_extras import anim_utils

        return anim_utils.action_get_channelbag_for_slot(ad.action, slot).fcurves
    return ad.action.fcurves


def fcurve_map(scene) -> dict:
    return {fc.data_path: fc for fc in fcurves(scene) if fc.array_index == 0}


def render_frames(scene) -> list[int]:
    """The frames a render covers: the preview range when Blender's preview range is on, else the scene's range."""
    if scene.use_preview_range:
        first, last = scene.frame_preview_start, scene.frame_preview_end
    else:
        first, last = scene.frame_start, scene.frame_end
    if first < 0:
        raise KeyfaceError(f"the frame range starts at {first}: keyface writes frames from 0 on")
    return list(range(first, last + 1))


def frame_values(scene, schema, frames) -> np.ndarray:
    """(F, C) channel values at ``frames`` as Blender evaluates them: each keyed channel's F-curve (Blender's own
    interpolation), an unkeyed one's current value; clipped to the channels' ranges like the properties."""
    group = getattr(scene, bridge.group_attr(schema.name))
    curves = fcurve_map(scene)
    out = np.empty((len(frames), len(schema)), np.float64)
    for c, ch in enumerate(schema.channels):
        fc = curves.get(bridge.data_path(schema.name, ch.name))
        if fc is not None and not fc.mute:
            out[:, c] = [fc.evaluate(f) for f in frames]
        else:
            out[:, c] = getattr(group, ch.name)
    return np.clip(out, schema.mins, schema.maxs)


def image_pixels(image) -> np.ndarray:
    """The Image datablock's pixels, (H, W, 4) straight RGBA, top row first: the file itself (exact, in its own
    depth) when the image is an unchanged file on disk, else Blender's buffer (8-bit, or float → 16-bit sRGB)."""
    from keyface.core.imageio import read_image

    if image is None:
        raise KeyfaceError("no image: choose the painting to animate (Image in the keyface panel)")
    if image.source not in ("FILE", "GENERATED"):
        raise KeyfaceError(f"image {image.name!r} is a {image.source.lower()}: keyface animates a still image")
    width, height = image.size
    path = Path(bpy.path.abspath(image.filepath, library=image.library)) if image.filepath else None
    if (image.source == "FILE" and path is not None and path.is_file() and not image.is_dirty
            and image.packed_file is None):
        img = read_image(path)
        if width and height and img.shape[:2] != (height, width):
            raise KeyfaceError(f"image {image.name!r}: Blender has {width}×{height} pixels, the file "
                               f"{img.shape[1]}×{img.shape[0]}: reload it (Image → Reload)")
        return img if img.shape[2] == 4 else np.concatenate(
            [img, np.full(img.shape[:2] + (1,), np.iinfo(img.dtype).max if img.dtype.kind == "u" else 1, img.dtype)],
            axis=2)
    if not width or not height:
        raise KeyfaceError(f"image {image.name!r} has no pixels (is its file missing?)")
    if image.channels not in (3, 4):
        raise KeyfaceError(f"image {image.name!r} has {image.channels} channels: keyface needs RGB or RGBA")
    buf = np.empty(width * height * image.channels, np.float32)
    image.pixels.foreach_get(buf)
    px = np.flipud(buf.reshape(height, width, image.channels))
    if px.shape[2] == 3:
        px = np.concatenate([px, np.ones(px.shape[:2] + (1,), np.float32)], axis=2)
    if not image.is_float:
        return np.ascontiguousarray(np.round(px * 255).astype(np.uint8))
    from keyface.core.pixels import linear_to_srgb, quantise, unpremultiply

    px = unpremultiply(px)
    if not image.colorspace_settings.is_data and "linear" in image.colorspace_settings.name.lower():
        px = np.concatenate([linear_to_srgb(np.clip(px[..., :3], 0, 1)), px[..., 3:]], axis=2)
    return np.ascontiguousarray(quantise(np.clip(px, 0, 1), np.uint16))


def blend_folder(scene) -> Path:
    if not bpy.data.filepath:
        raise KeyfaceError("save the .blend first: the frames are written next to it")
    return bridge.frames_folder(bpy.data.filepath, scene.name)


# ------------------------------------------------------------------------------------------------------ render job


def plan_render(scene):
    """Everything read from Blender (main thread) before a render: returns a RenderTask, not started."""
    from keyface.core.pipeline import FrameJob  # noqa: F401  (fail here, with a report, if torch is missing)

    settings = settings_of(scene)
    info = model_info(scene)
    schema = rig_schema(scene)
    source = image_pixels(settings.image)
    frames = render_frames(scene)
    values = frame_values(scene, schema, frames)
    box = face_box(scene)
    if box is not None:
        h, w = source.shape[:2]
        if box[0] + box[2] > w or box[1] + box[3] > h:
            raise KeyfaceError(f"the face box {list(box)} does not fit the {w}×{h} image")
    folder = blend_folder(scene)
    fps = scene.render.fps / scene.render.fps_base
    ks = bridge.values_scene(schema, info.id, box, frames, values, fps, reswarp=settings.reswarp,
                             bit_depth=16 if source.dtype == np.uint16 else 8)
    setup = {"source": bridge.source_digest(source), "model": info.id, "schema": schema.name,
             "face_box": list(box) if box else None, "reswarp": settings.reswarp, "depth": source.dtype.str}
    todo = bridge.prepare_folder(folder, setup, frames, values)
    task = bridge.RenderTask(ks, folder, frames, source, device=settings.device)
    task.todo = todo
    return task


def load_frames(scene, task) -> None:
    """Put rendered frames where a compositor uses them: an image strip in the Sequencer at the rendered frames (the
    previous keyface strip replaced) and an Image datablock (source: image sequence) named ``keyface <scene>``."""
    files = task.files()
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise KeyfaceError(f"{len(missing)} rendered frame(s) are missing, e.g. {missing[0]}")
    first = task.frames[0]
    edit = scene.sequence_editor or scene.sequence_editor_create()
    strips = getattr(edit, "strips", None)
    if strips is None:
        strips = edit.sequences
    name = f"{SEQUENCE_STRIP} {scene.name}"
    channel = None
    for strip in list(strips):
        if strip.name == name:
            channel = strip.channel
            strips.remove(strip)
    if channel is None:
        busy = [s.channel for s in strips if s.frame_final_start <= task.frames[-1] and s.frame_final_end > first]
        channel = max(busy, default=0) + 1
    directory = bpy.path.relpath(str(task.folder)) if bpy.data.filepath else str(task.folder)
    strip = strips.new_image(name=name, filepath=str(Path(directory) / files[0].name), channel=channel,
                             frame_start=first, fit_method="FIT")  # a 4K frame on a smaller canvas shows whole
    for f in files[1:]:
        strip.elements.append(f.name)
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(str(files[0]), check_existing=False)
        image.name = name
    else:
        image.filepath = str(files[0])
    image.source = "SEQUENCE"
    image.reload()
    settings_of(scene).last_folder = str(task.folder)


# ------------------------------------------------------------------------------------------------------ export / import


def scene_from_blender(scene):
    """The Blender scene's keyface settings and keys as a keyface :class:`~keyface.core.scene.Scene` (keys with
    their interpolation where keyface has it exactly, Blender's values baked per frame elsewhere)."""
    from keyface.core.scene import Scene
    from keyface.core.timeline import Key, Timeline, Track

    settings = settings_of(scene)
    schema = rig_schema(scene)
    group = getattr(scene, bridge.group_attr(schema.name))
    curves = fcurve_map(scene)
    frames = render_frames(scene)
    tracks = {}
    for ch in schema.channels:
        fc = curves.get(bridge.data_path(schema.name, ch.name))
        if fc is not None and not fc.mute and len(fc.keyframe_points):
            if len(fc.modifiers) or fc.extrapolation != "CONSTANT":  # bake the render range
                tracks[ch.name] = Track([Key(f, min(max(fc.evaluate(f), ch.min), ch.max), "linear") for f in frames],
                                        default=ch.default)
                continue
            bkeys = [bridge.BKey(k.co[0], k.co[1], k.interpolation, k.easing, tuple(k.handle_left),
                                 tuple(k.handle_right), k.handle_left_type, k.handle_right_type)
                     for k in sorted(fc.keyframe_points, key=lambda k: k.co[0])]
            tracks[ch.name] = bridge.bkeys_to_track(bkeys, fc.evaluate, ch.min, ch.max, ch.default)
        else:
            value = float(getattr(group, ch.name))
            if abs(value - ch.default) > 1e-7:
                tracks[ch.name] = Track([Key(frames[0], value, "constant")], default=ch.default)
    source = bpy.path.abspath(settings.image.filepath) if settings.image and settings.image.filepath else ""
    return Scene(source=source or "(no image file)", schema=schema, timeline=Timeline(schema, tracks),
                 model=model_info(scene).id, face_box=face_box(scene),
                 fps=scene.render.fps / scene.render.fps_base, frame_range=(frames[0], frames[-1]))


def remove_keys(scene, schema) -> None:
    prefix = bridge.group_attr(schema.name) + "."
    if scene.animation_data is None or scene.animation_data.action is None:
        return
    coll = _fcurve_collection(scene)
    for fc in list(coll):
        if fc.data_path.startswith(prefix):
            coll.remove(fc)


def write_track(scene, schema, channel: str, track) -> None:
    """A keyface track as the F-curve of ``Scene.keyface_<schema>.<channel>``, evaluating to the same values."""
    bkeys = bridge.track_to_bkeys(track)
    path = bridge.data_path(schema.name, channel)
    group = getattr(scene, bridge.group_attr(schema.name))
    setattr(group, channel, bkeys[0].value)
    scene.keyframe_insert(data_path=path, frame=bkeys[0].frame, group=schema.channel(channel).group)
    fc = fcurve_map(scene)[path]
    points = fc.keyframe_points
    while len(points) > 1:
        points.remove(points[len(points) - 1], fast=True)
    points.add(len(bkeys) - 1)
    for p, b in zip(points, bkeys, strict=True):
        p.co = (b.frame, b.value)
        p.interpolation = b.interpolation
        p.easing = b.easing
        p.handle_left_type = p.handle_right_type = "FREE"
        p.handle_left = b.handle_left
        p.handle_right = b.handle_right
    fc.extrapolation = "CONSTANT"
    fc.update()


def apply_scene(scene, ks, base_dir: Path | None = None) -> list[str]:
    """Set the Blender scene from a keyface scene: model, rig, face box, fps, frame range, the source image (loaded
    when its file exists) and every track as an F-curve. Returns notes for the user."""
    from keyface.core.models import get_model

    notes = []
    settings = settings_of(scene)
    if ks.model:
        try:
            get_model(ks.model)
            settings.model_id = ks.model
        except KeyfaceError as e:
            notes.append(f"model {ks.model} is not available ({e}); kept {settings.model_id or 'none'}")
    model_schema = model_info(scene).schema.name
    if ks.schema.name not in _SCHEMAS:
        raise KeyfaceError(f"the scene's rig {ks.schema.name!r} is not registered in Blender (restart Blender after "
                           "installing the model that defines it)")
    settings.rig_name = "" if ks.schema.name == model_schema else ks.schema.name
    if ks.face_box:
        settings.use_face_box = True
        settings.box_x, settings.box_y, settings.box_w, settings.box_h = ks.face_box
    else:
        settings.use_face_box = False
    fps = float(ks.fps)
    scene.render.fps = max(1, round(fps))
    scene.render.fps_base = scene.render.fps / fps
    scene.frame_start, scene.frame_end = ks.frame_range
    path = ks.source_path
    if path.is_file():
        settings.image = bpy.data.images.load(str(path), check_existing=True)
    else:
        notes.append(f"source image not found: {path}; kept the current image")
    remove_keys(scene, ks.schema)
    group = getattr(scene, bridge.group_attr(ks.schema.name))
    for ch in ks.schema.channels:
        track = ks.timeline.tracks.get(ch.name)
        if track is not None and len(track):
            write_track(scene, ks.schema, ch.name, track)
        else:
            setattr(group, ch.name, ch.default)
    scene.frame_set(scene.frame_current)
    return notes


# ------------------------------------------------------------------------------------------------------ operators


def _guarded(op, fn, *args):
    """Run an operator body: keyface errors become an error report, anything else a report with the traceback on
    the console; never an exception into Blender."""
    try:
        return fn(*args)
    except KeyfaceError as e:
        op.report({"ERROR"}, f"keyface: {e}")
    except MemoryError:
        op.report({"ERROR"}, "keyface: out of memory (a smaller image, or a shorter range)")
    except Exception as e:  # reported, never raised into Blender
        traceback.print_exc()
        op.report({"ERROR"}, f"keyface: {type(e).__name__}: {e} (details on the console)")
    return {"CANCELLED"}


_ACTIVE: dict = {}  # the running render (one at a time)


class KEYFACE_OT_render(bpy.types.Operator):
    """Render the frame range (the preview range when it is on) through keyface into frames next to the .blend, then
    load them as an image strip in the Sequencer and an image sequence"""

    bl_idname = "keyface.render"
    bl_label = "Render keyface frames"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return context.scene is not None and "task" not in _ACTIVE

    def execute(self, context):  # blocking (headless scripts, the Python console)
        return _guarded(self, self._execute, context)

    def _execute(self, context):
        task = plan_render(context.scene)
        print(f"keyface: rendering {len(task.todo)} of {len(task.frames)} frames into {task.folder}")
        task.run()
        return self._finish(context, task)

    def _finish(self, context, task):
        if task.error is not None:
            if isinstance(task.error, KeyfaceError):
                raise task.error
            raise RuntimeError(f"the render failed: {type(task.error).__name__}: {task.error}") from task.error
        if task.cancelled:
            self.report({"WARNING"}, f"keyface: cancelled after {task.done} of {task.total} frames; rendering "
                                     "again resumes")
            return {"CANCELLED"}
        load_frames(context.scene, task)
        self.report({"INFO"}, f"keyface: {len(task.frames)} frames in {task.folder}")
        return {"FINISHED"}

    def invoke(self, context, event):
        return _guarded(self, self._invoke, context)

    def _invoke(self, context):
        task = plan_render(context.scene)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.progress_begin(0, max(1, len(task.frames)))
        _ACTIVE["task"] = task.start()
        self._status(context, task)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _status(self, context, task):
        text = f"keyface: frame {task.done} of {task.total} — Esc cancels"
        if task.cancelled:
            text = "keyface: cancelling after this batch…"
        context.workspace.status_text_set(text)
        context.window_manager.progress_update(task.done)

    def _end(self, context):
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        context.workspace.status_text_set(None)
        task = _ACTIVE.pop("task", None)
        return task

    def modal(self, context, event):
        task = _ACTIVE.get("task")
        if task is None:
            return {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            task.cancel()
        if event.type == "TIMER":
            self._status(context, task)
            if not task.running:
                self._end(context)
                return _guarded(self, self._finish, context, task)
            for area in context.screen.areas if context.screen else ():
                area.tag_redraw()
        return {"PASS_THROUGH"}

    def cancel(self, context):  # Blender closing the window / file while rendering
        task = _ACTIVE.get("task")
        if task is not None:
            task.cancel()
            task.wait()
            self._end(context)


_JOBS: dict = {}  # preview: the prepared FrameJob, reused while image, model and box stay the same


def _preview_job(scene, source):
    from keyface.core.pipeline import FrameJob

    settings = settings_of(scene)
    model = model_info(scene).id
    key = (bridge.source_digest(source), model, face_box(scene), settings.device, settings.reswarp)
    if _JOBS.get("key") != key:
        _JOBS.clear()
        _JOBS["job"] = FrameJob.prepare(source, model, face_box(scene), settings.device, settings.reswarp)
        _JOBS["key"] = key
    return _JOBS["job"]


def show_pixels(name: str, img: np.ndarray, context=None):
    """(H, W, 4) straight RGBA (uint8/uint16/float) into an Image datablock ``name`` (created or resized), shown in
    the Image Editors of the current screen."""
    h, w = img.shape[:2]
    image = bpy.data.images.get(name)
    is_float = img.dtype != np.uint8
    if image is None or tuple(image.size) != (w, h) or image.is_float != is_float:
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(name, w, h, alpha=True, float_buffer=is_float)
        if is_float:
            image.colorspace_settings.name = "sRGB"
    scale = 255.0 if img.dtype == np.uint8 else 65535.0 if img.dtype == np.uint16 else 1.0
    flat = np.flipud(img).astype(np.float32).ravel() / scale
    image.pixels.foreach_set(flat)
    image.update()
    if context is not None and context.screen is not None:
        for area in context.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
                area.tag_redraw()
    return image


class KEYFACE_OT_preview(bpy.types.Operator):
    """Render the current frame at full resolution into the image "keyface preview" (shown in the Image Editor)"""

    bl_idname = "keyface.preview"
    bl_label = "Preview frame"

    def execute(self, context):
        return _guarded(self, self._execute, context)

    def _execute(self, context):
        scene = context.scene
        from keyface.core.rig import convert

        source = image_pixels(settings_of(scene).image)
        schema = rig_schema(scene)
        values = frame_values(scene, schema, [scene.frame_current])
        job = _preview_job(scene, source)
        frame = job.frames(convert(values, schema, job.schema).astype(np.float32))[0]
        show_pixels(PREVIEW_IMAGE, frame, context)
        self.report({"INFO"}, f"keyface: frame {scene.frame_current} previewed in “{PREVIEW_IMAGE}”")
        return {"FINISHED"}


class KEYFACE_OT_detect_face(bpy.types.Operator):
    """Detect the face box in the image (the same box every model derives its region from)"""

    bl_idname = "keyface.detect_face"
    bl_label = "Detect"

    def execute(self, context):
        return _guarded(self, self._execute, context)

    def _execute(self, context):
        from keyface.core.generator import default_face_box

        settings = settings_of(context.scene)
        box = default_face_box(image_pixels(settings.image))
        settings.box_x, settings.box_y, settings.box_w, settings.box_h = int(box.x), int(box.y), int(box.w), int(box.h)
        settings.use_face_box = True
        self.report({"INFO"}, f"keyface: face box {box.x}, {box.y}, {box.w}×{box.h}")
        return {"FINISHED"}


class KEYFACE_OT_export_scene(bpy.types.Operator, ExportHelper):
    """Write the keys and settings as a keyface scene file (JSON), for keyface render, the editor or Krita"""

    bl_idname = "keyface.export_scene"
    bl_label = "Export keyface scene"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def execute(self, context):
        return _guarded(self, self._execute, context)

    def _execute(self, context):
        import os

        from keyface.core.scene import save_scene

        ks = scene_from_blender(context.scene)
        target = Path(self.filepath)
        if Path(ks.source).is_absolute():
            try:
                ks.source = os.path.relpath(ks.source, target.parent)
            except ValueError:  # another drive (Windows): keep it absolute
                pass
        try:
            save_scene(ks, target)
        except OSError as e:
            raise KeyfaceError(f"cannot write {target}: {e}") from None
        self.report({"INFO"}, f"keyface: scene written to {target}")
        return {"FINISHED"}


class KEYFACE_OT_import_scene(bpy.types.Operator, ImportHelper):
    """Read a keyface scene file (JSON): its keys become F-curves, and its model, face box, frame range, fps and image
    are set"""

    bl_idname = "keyface.import_scene"
    bl_label = "Import keyface scene"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def execute(self, context):
        return _guarded(self, self._execute, context)

    def _execute(self, context):
        from keyface.core.scene import load_scene

        ks = load_scene(self.filepath)
        for note in apply_scene(context.scene, ks):
            self.report({"WARNING"}, f"keyface: {note}")
        self.report({"INFO"}, f"keyface: imported {len(ks.timeline.tracks)} tracks from {self.filepath}")
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------------------ panels


class _Main:
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "keyface"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        s = settings_of(scene)
        layout.template_ID(s, "image", open="image.open")
        layout.prop(s, "model")
        layout.prop(s, "rig")
        box = layout.box()
        row = box.row()
        row.prop(s, "use_face_box")
        row.operator(KEYFACE_OT_detect_face.bl_idname, icon="VIEWZOOM")
        col = box.column(align=True)
        col.enabled = s.use_face_box
        row = col.row(align=True)
        row.prop(s, "box_x")
        row.prop(s, "box_y")
        row = col.row(align=True)
        row.prop(s, "box_w")
        row.prop(s, "box_h")
        if self.bl_space_type == "IMAGE_EDITOR":
            col.prop(s, "show_box")
        row = layout.row(align=True)
        row.prop(s, "device", text="")
        row.prop(s, "reswarp", text="")
        frames = (scene.frame_preview_start, scene.frame_preview_end) if scene.use_preview_range else (
            scene.frame_start, scene.frame_end)
        layout.label(text=f"Frames {frames[0]}–{frames[1]}" + (" (preview range)" if scene.use_preview_range else ""))
        task = _ACTIVE.get("task")
        if task is not None:
            layout.label(text=f"Rendering {task.done} / {task.total} (Esc cancels)", icon="RENDER_ANIMATION")
        col = layout.column(align=True)
        col.operator_context = "INVOKE_DEFAULT"
        col.operator(KEYFACE_OT_render.bl_idname, icon="RENDER_ANIMATION")
        col.operator(KEYFACE_OT_preview.bl_idname, icon="IMAGE_DATA")
        row = layout.row(align=True)
        row.operator(KEYFACE_OT_import_scene.bl_idname, text="Import", icon="IMPORT")
        row.operator(KEYFACE_OT_export_scene.bl_idname, text="Export", icon="EXPORT")
        if s.last_folder:
            layout.label(text=f"Frames: {s.last_folder}", icon="FILE_FOLDER")


class _Params:
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "Parameters"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        try:
            schema = rig_schema(scene)
        except KeyfaceError as e:
            layout.label(text=str(e), icon="ERROR")
            return
        group = getattr(scene, bridge.group_attr(schema.name))
        layout.label(text=f"{schema.name}: hover a field and press I to key it")
        boxes = {}  # one box per channel group, in the order groups first appear (au17's AU45 joins the eyes)
        for ch in schema.channels:
            if ch.group not in boxes:
                boxes[ch.group] = layout.box().column(align=True)
                boxes[ch.group].label(text=ch.group.capitalize())
            boxes[ch.group].prop(group, ch.name)


PANELS = []
for _space in ("IMAGE_EDITOR", "SEQUENCE_EDITOR"):
    _main = type(f"KEYFACE_PT_main_{_space.lower()}", (_Main, bpy.types.Panel),
                 {"bl_space_type": _space, "bl_idname": f"KEYFACE_PT_main_{_space.lower()}"})
    _params = type(f"KEYFACE_PT_params_{_space.lower()}", (_Params, bpy.types.Panel),
                   {"bl_space_type": _space, "bl_idname": f"KEYFACE_PT_params_{_space.lower()}",
                    "bl_parent_id": _main.bl_idname})
    PANELS += [_main, _params]


# ------------------------------------------------------------------------------------------------------ face box

_DRAW: dict = {}


def _draw_box():
    try:
        import gpu
        from gpu_extras.batch import batch_for_shader

        context = bpy.context
        space, region, scene = context.space_data, context.region, context.scene
        s = settings_of(scene)
        image = s.image
        if not (s.show_box and s.use_face_box and image is not None and space.image == image):
            return
        w, h = image.size
        if not w or not h:
            return
        corners = [(s.box_x, s.box_y), (s.box_x + s.box_w, s.box_y), (s.box_x + s.box_w, s.box_y + s.box_h),
                   (s.box_x, s.box_y + s.box_h)]
        pts = [region.view2d.view_to_region(x / w, 1 - y / h, clip=False) for x, y in corners]
        lines = [p for i in range(4) for p in (pts[i], pts[(i + 1) % 4])]
        name = "UNIFORM_COLOR" if bpy.app.version >= (4, 0, 0) else "2D_UNIFORM_COLOR"
        shader = gpu.shader.from_builtin(name)
        batch = batch_for_shader(shader, "LINES", {"pos": lines})
        shader.bind()
        shader.uniform_float("color", (1.0, 0.55, 0.1, 1.0))
        batch.draw(shader)
    except Exception:  # a drawing problem must never break the editor
        traceback.print_exc()


# ------------------------------------------------------------------------------------------------------ register

CLASSES = [KEYFACE_PG_settings, KEYFACE_OT_render, KEYFACE_OT_preview, KEYFACE_OT_detect_face,
           KEYFACE_OT_export_scene, KEYFACE_OT_import_scene]


def register() -> None:
    _SCHEMAS.clear()
    _SCHEMAS.update(_schemas())
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.keyface = PointerProperty(type=KEYFACE_PG_settings)
    _GROUP_CLASSES.clear()
    for name, schema in _SCHEMAS.items():
        cls = _group_class(name, schema)
        bpy.utils.register_class(cls)
        setattr(bpy.types.Scene, bridge.group_attr(name), PointerProperty(type=cls))
        _GROUP_CLASSES.append((name, cls))
    for cls in PANELS:
        bpy.utils.register_class(cls)
    if not bpy.app.background:
        _DRAW["image"] = bpy.types.SpaceImageEditor.draw_handler_add(_draw_box, (), "WINDOW", "POST_PIXEL")


def unregister() -> None:
    task = _ACTIVE.pop("task", None)
    if task is not None:
        task.cancel()
        task.wait()
    handle = _DRAW.pop("image", None)
    if handle is not None:
        bpy.types.SpaceImageEditor.draw_handler_remove(handle, "WINDOW")
    for cls in reversed(PANELS):
        bpy.utils.unregister_class(cls)
    for name, cls in reversed(_GROUP_CLASSES):
        delattr(bpy.types.Scene, bridge.group_attr(name))
        bpy.utils.unregister_class(cls)
    _GROUP_CLASSES.clear()
    del bpy.types.Scene.keyface
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    _JOBS.clear()
