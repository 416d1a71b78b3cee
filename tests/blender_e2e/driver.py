"""Drives the installed keyface add-on inside the pip ``bpy`` module (run by tests/test_blender_addon.py in a
subprocess with BLENDER_USER_SCRIPTS pointing at the throw-away scripts folder `keyface blender install` wrote).

    python driver.py render WORK   # enable the add-on, load the image, key, render, export, save WORK/anim.blend
    python driver.py reopen WORK   # open WORK/anim.blend, dump keys and settings, import the export, export again

Each phase writes WORK/<phase>.json with what it saw; the test checks it."""

import json
import sys
from pathlib import Path

import bpy

PHASE, WORK = sys.argv[1], Path(sys.argv[2])
CFG = json.loads((WORK / "config.json").read_text())
GROUP = "keyface_au17"


def enable():
    import addon_utils  # Blender's own module: importable once bpy is imported

    mod = addon_utils.enable("keyface_blender", default_set=True, handle_error=None)
    assert mod is not None, "the add-on did not enable"
    assert hasattr(bpy.types.Scene, "keyface"), "the add-on enabled but registered nothing (see the console)"


def keys_dump(scene):
    from keyface.addon.blender import addon

    out = {}
    for fc in addon.fcurves(scene):
        out[fc.data_path] = [[k.co[0], k.co[1], k.interpolation, k.easing, list(k.handle_left), list(k.handle_right)]
                             for k in fc.keyframe_points]
    return out


def values(scene, frames):
    group = getattr(scene, GROUP)
    out = []
    for f in frames:
        scene.frame_set(f)
        out.append([getattr(group, name) for name in CFG["channels"]])
    return out


def settings_dump(scene):
    s = scene.keyface
    return {"model": s.model_id, "image": s.image.name if s.image else None, "use_face_box": s.use_face_box,
            "box": [s.box_x, s.box_y, s.box_w, s.box_h], "frame_range": [scene.frame_start, scene.frame_end]}


def key(scene, channel, frame, value, interpolation, easing="AUTO"):
    group = getattr(scene, GROUP)
    setattr(group, channel, value)
    assert scene.keyframe_insert(data_path=f"{GROUP}.{channel}", frame=frame)
    from keyface.addon.blender import addon

    fc = addon.fcurve_map(scene)[f"{GROUP}.{channel}"]
    k = next(p for p in fc.keyframe_points if p.co[0] == frame)
    k.interpolation = interpolation
    k.easing = easing


def render_phase():
    enable()
    result = {}
    scene = bpy.context.scene
    # errors are reports (RuntimeError for a script), never a half-done operator
    try:
        bpy.ops.keyface.render()
        result["no_image_error"] = None
    except RuntimeError as e:
        result["no_image_error"] = str(e)
    image = bpy.data.images.load(CFG["image"])
    s = scene.keyface
    s.image = image
    s.model = CFG["model"]
    s.use_face_box = True
    s.box_x, s.box_y, s.box_w, s.box_h = CFG["face_box"]
    first, last = CFG["frames"]
    scene.frame_start, scene.frame_end = first, last
    for channel, keys in CFG["keys"].items():
        for frame, value, interp, easing in keys:
            key(scene, channel, frame, value, interp, easing)
    try:
        bpy.ops.keyface.render()
        result["unsaved_error"] = None
    except RuntimeError as e:
        result["unsaved_error"] = str(e)
    bpy.ops.wm.save_as_mainfile(filepath=str(WORK / "anim.blend"))
    frames = list(range(first, last + 1))
    result["values"] = values(scene, frames)
    result["render"] = list(bpy.ops.keyface.render())
    folder = Path(s.last_folder)
    result["folder"] = str(folder)
    result["mtimes"] = {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("frame_*.png"))}
    result["render_again"] = list(bpy.ops.keyface.render())  # resumes: every frame is kept
    result["mtimes_again"] = {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("frame_*.png"))}
    edit = scene.sequence_editor
    strips = [st for st in edit.strips if st.name.startswith("keyface")]
    result["strips"] = [{"name": st.name, "type": st.type, "start": st.frame_final_start, "end": st.frame_final_end,
                         "elements": [e.filename for e in st.elements],
                         "directory": bpy.path.abspath(st.directory)} for st in strips]
    seq = bpy.data.images.get(f"keyface {scene.name}")
    result["image_sequence"] = None if seq is None else {"source": seq.source,
                                                         "path": bpy.path.abspath(seq.filepath)}
    scene.frame_set(first)
    result["preview"] = list(bpy.ops.keyface.preview())
    preview = bpy.data.images.get("keyface preview")
    result["preview_size"] = list(preview.size) if preview else None
    result["export"] = list(bpy.ops.keyface.export_scene(filepath=str(WORK / "exported.json")))
    result["keys"] = keys_dump(scene)
    result["settings"] = settings_dump(scene)
    bpy.ops.wm.save_mainfile()
    (WORK / "render.json").write_text(json.dumps(result))


def reopen_phase():
    enable()
    bpy.ops.wm.open_mainfile(filepath=str(WORK / "anim.blend"))
    scene = bpy.context.scene
    result = {"keys": keys_dump(scene), "settings": settings_dump(scene)}
    first, last = CFG["frames"]
    frames = list(range(first, last + 1))
    result["values"] = values(scene, frames)
    # import the exported scene into a fresh scene: Blender evaluates the imported F-curves to the same values
    new = bpy.data.scenes.new("imported")
    with bpy.context.temp_override(scene=new):
        result["import"] = list(bpy.ops.keyface.import_scene(filepath=str(WORK / "exported.json")))
        result["import_values"] = values(new, frames)
        result["import_settings"] = settings_dump(new)
        result["export_again"] = list(bpy.ops.keyface.export_scene(filepath=str(WORK / "exported_again.json")))
    (WORK / "reopen.json").write_text(json.dumps(result))


{"render": render_phase, "reopen": reopen_phase}[PHASE]()
