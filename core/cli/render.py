"""The artist's and compositor's jobs: list models, check a scene, render it, pose one frame, lift with ResWarp,
edit."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np

from ..errors import KeyfaceError
from ..video import MOVIE_FORMATS
from .common import frames_arg, positive, positive_int, progress_bar, set_arg, table


def cmd_models(args, out) -> int:
    from ..models import available_models
    from ..rig import get_converter, get_schema, schema_names

    models = available_models()
    if args.json:
        doc = {"models": [{"id": m.id, "method": m.method, "schema": m.schema_name, "description": m.description,
                           "licence": m.licence} for m in models],
               "schemas": [get_schema(n).to_json() for n in ([args.schema] if args.schema else schema_names())]}
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return 0
    if args.schema:
        schema = get_schema(args.schema)
        out.write(f"{schema.name}: {schema.description}\n")
        if schema.network_divisor != 1:
            out.write(f"networks see value / {schema.network_divisor:g}\n")
        rows = [["#", "channel", "group", "side", "min", "max", "default", "unit", "description"]]
        for i, c in enumerate(schema.channels):
            rows.append([str(i), c.name, c.group, c.side or "-", f"{c.min:g}", f"{c.max:g}", f"{c.default:g}",
                         c.unit or "-", c.description])
        table(rows, out)
        conv = get_converter(schema)
        for title, lost in (("character rig → " + schema.name, conv.lost_to),
                            (schema.name + " → character rig", conv.lost_from)):
            if lost:
                out.write(f"\n{title} loses:\n")
                for name, why in lost.items():
                    out.write(f"  {name}: {why}\n")
        return 0
    out.write("Generators:\n")
    if models:
        table([[m.id, m.method, m.schema_name, m.description] for m in models], out)
        for m in models:
            if m.licence:
                out.write(f"  {m.id}: {m.licence}\n")
    else:
        out.write("  none installed yet\n")
    out.write("\nSchemas (keyface models --schema NAME lists the channels):\n")
    table([["  " + n, f"{len(get_schema(n))} channels", get_schema(n).description] for n in schema_names()], out)
    out.write("  3dmm:KxL  a 3DMM schema with K identity and L expression coefficients\n")
    return 0


def cmd_scene_check(args, out) -> int:
    from ..scene import check_source, load_scene

    scene = load_scene(args.file)
    width, height = check_source(scene)
    from ..pipeline import MAX_FRAMES

    first, last = args.frames or scene.frame_range
    if (last - first) / args.step + 1 > MAX_FRAMES:
        raise KeyfaceError(f"{(last - first) / args.step + 1:,.0f} samples asked for (more than {MAX_FRAMES:,}): "
                           "check the frame range or the step")
    frames = np.arange(first, last + args.step * 0.5, args.step)
    raw = scene.sample(frames, clip=False)
    values = np.clip(raw, scene.schema.mins, scene.schema.maxs)
    if args.channels:
        names = [n.strip() for n in args.channels.split(",") if n.strip()]
        for n in names:
            scene.schema.index(n)
    else:
        names = [n for n in scene.schema.names if n in scene.timeline.tracks]
    idx = [scene.schema.index(n) for n in names]
    over = [scene.schema.names[i] for i in range(len(scene.schema)) if np.any(raw[:, i] != values[:, i])]
    warnings = [f"{n}'s curve goes past its range (user handles); sampled values are held at the limit" for n in over]
    if args.json:
        doc = {"frames": frames.tolist(), "values": {n: values[:, i].tolist() for n, i in zip(names, idx, strict=True)},
               "warnings": warnings}
        out.write(json.dumps(doc) + "\n")
        return 0
    box = "automatic" if scene.face_box is None else "x={} y={} w={} h={}".format(*scene.face_box)
    out.write(f"{args.file}: OK\n  schema {scene.schema.name}, model {scene.model or '(none)'}, "
              f"frames {scene.frame_range[0]}–{scene.frame_range[1]} at {scene.fps:g} fps\n"
              f"  source {scene.source} ({width}×{height}), face box {box}\n"
              f"  output {scene.output.format} {scene.output.bit_depth}-bit, ResWarp {scene.output.reswarp}, "
              f"into {scene.output.directory}/\n")
    for w in warnings:
        out.write(f"  warning: {w}\n")
    if not names:
        out.write("  no tracks: every frame is the rest pose\n")
        return 0
    digits = 0 if float(args.step).is_integer() else 3
    rows = [["frame"] + names] + [[f"{f:.{digits}f}"] + [f"{values[r, i]:.3f}" for i in idx]
                                  for r, f in enumerate(frames)]
    table(rows, out)
    return 0


def cmd_reswarp(args, out) -> int:
    from ..box import Box
    from ..errors import ResWarpError
    from ..imageio import read_image, write_image
    from ..reswarp import Lifter, estimate_flow

    source = read_image(args.source)
    low = read_image(args.low)
    box = Box.parse(args.box) if args.box else None
    if args.flow == "estimate":
        flow = None
    else:
        try:
            flow = np.load(args.flow, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ResWarpError(f"cannot read flow {args.flow}: {e}") from None
    lifter = Lifter(source, box, grid=low.shape[:2], mode=args.mode, interp=args.interp, feather=args.feather)
    if flow is None:
        flow = estimate_flow(lifter.low_input(), low)
    write_image(args.out, lifter.lift(low, flow))
    out.write(f"wrote {args.out} ({source.shape[1]}×{source.shape[0]}, {args.mode})\n")
    return 0


def cmd_render(args, out) -> int:
    from ..scene import load_scene

    if args.workers or args.scheduler:  # on a Dask cluster (keyface.core.distributed imports distributed)
        from ..distributed import cli_render

        return cli_render(args, out)
    if args.gather:
        raise KeyfaceError("--gather is for cluster renders (with --workers N or --scheduler ADDRESS)")
    if len(args.scene) > 1 and args.out:
        raise KeyfaceError("--out names one scene's output: give one scene, or let each scene use its own folder")
    scenes = [load_scene(path) for path in args.scene]  # every scene checked before the first frame
    for scene in scenes:
        code = _render_one(scene, args, out)
        if code:
            return code
    return 0


def _render_one(scene, args, out) -> int:
    from ..pipeline import render_scene

    frames = None
    if args.frames:
        first, last = args.frames
        frames = range(first, last + 1)
    bar, progress = progress_bar("render", "frame", args.quiet)
    fmt = args.format or scene.output.format
    try:
        written = render_scene(scene, args.out, frames=frames, fmt=fmt, device=args.device,
                               resume=args.resume, batch=args.batch, progress=progress, quality=args.quality,
                               background=args.background)
    except KeyboardInterrupt:
        bar.close()
        if fmt in MOVIE_FORMATS:
            out.write("interrupted; no movie was written (a movie render restarts from its first frame)\n")
        else:
            out.write("interrupted; finished frames are kept: rerun with --resume\n")
        return 130
    bar.close()
    if fmt in MOVIE_FORMATS:
        out.write(f"wrote {written[0]}\n" if written else "stopped; no movie was written\n")
    else:
        out.write(f"wrote {len(written)} frames to {args.out or scene.output_dir}\n")
    return 0


def colour_arg(text: str) -> tuple[int, int, int]:
    """#RRGGBB or R,G,B (0–255)."""
    t = text.strip().lstrip("#")
    try:
        rgb = tuple(int(t[i:i + 2], 16) for i in (0, 2, 4)) if len(t) == 6 and "," not in t else \
            tuple(int(v) for v in t.split(","))
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a colour #RRGGBB or R,G,B, got {text!r}") from None
    return rgb


def quality_arg(text: str):
    """A number (CRF, colours) or a word (a ProRes profile)."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def cmd_pose(args, out) -> int:
    from ..box import Box
    from ..generator import read_fit
    from ..imageio import read_image, write_image
    from ..io import atomic_write_bytes
    from ..models import get_model
    from ..pipeline import FrameJob
    from ..pixels import with_alpha

    schema = get_model(args.model).schema
    source = read_image(args.image)
    job = FrameJob.prepare(source, args.model, Box.parse(args.box) if args.box else None, args.device, args.mode)
    values = schema.defaults[None].copy()  # the rest pose (or the driver's face: --from-fit), then the --set values
    if args.from_fit:
        if not job.runtime.has_fit:
            raise KeyfaceError(f"model {args.model} fits no face model: --from-fit is for e.g. f3a-3dmm")
        values[0] = job.runtime.values_from_fit(read_fit(args.from_fit, schema),
                                                 with_alpha(job.lifter.low_input()))
    for name, value in args.set or []:
        values[0, schema.index(name)] = value
    values = schema.validate(values).astype(np.float32)
    if args.raw:
        if not job.runtime.has_raw:
            raise KeyfaceError(f"model {args.model} has no raw output (--raw is for generators with their own "
                               "convention, e.g. THA)")
        buf = io.BytesIO()
        np.save(buf, job.runtime.raw(job.lifter.low_input()[None], values)[0])
        atomic_write_bytes(args.raw, buf.getvalue())
    write_image(args.out, job.frames(values)[0])
    b, w = job.face_box, job.box
    out.write(f"wrote {args.out} ({source.shape[1]}×{source.shape[0]}, face box {b.x},{b.y},{b.w},{b.h}; the "
              f"generator's region {w.x},{w.y},{w.w},{w.h})\n")
    return 0


def cmd_keys_from_video(args, out) -> int:
    import os
    from pathlib import Path

    from ..box import Box
    from ..imageio import write_image
    from ..models import get_model
    from ..motion import keys_to_scene, read_reference, reference_keys
    from ..scene import save_scene

    if not 0 < args.tolerance < 1:
        raise KeyfaceError("--tolerance is a fraction of each channel's range, in (0, 1)")
    if args.smooth < 0:
        raise KeyfaceError("--smooth must be ≥ 0 frames")
    info = get_model(args.model)
    runtime = info.load(args.device)
    if not runtime.has_motion:
        raise KeyfaceError(f"model {args.model} does not read motion from a reference (use e.g. stylemap-kp)")
    frames, fps = read_reference(args.reference, args.max_frames)
    bar, move = progress_bar("frames", "frame", args.quiet, len(frames))
    try:
        values = reference_keys(runtime, frames, Box.parse(args.box) if args.box else None, args.smooth,
                                move)
    finally:
        bar.close()
    scene_path = Path(args.out)
    if args.source:
        source = os.path.relpath(Path(args.source).resolve(), scene_path.resolve().parent)
    else:  # the reference's first frame, so the scene renders the reference's own character
        first = scene_path.with_name(scene_path.stem + ".reference.png")
        write_image(first, frames[0])
        source = first.name
        out.write(f"wrote {first} (the reference's first frame: the scene's source; --source sets another)\n")
    scene, report = keys_to_scene(values, info.schema.name, args.schema or info.schema.name, args.tolerance,
                                  source, args.model, args.fps or fps or 24.0)
    save_scene(scene, scene_path)
    out.write(f"wrote {scene_path}: {report['keys']} keys on {report['channels_keyed']} channels for "
              f"{report['frames']} frames ({scene.schema.name}); largest error of the reduced curves "
              f"{report['max_error']:.4g} ({100 * report['max_error_fraction']:.2f} % of a channel's range)\n")
    return 0


def cmd_sheet(args, out) -> int:
    from ..imageio import write_image
    from ..models import available_models
    from ..sheet import INTENTS, comparison_sheet

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else \
        [m.id for m in available_models()]
    intents = [i.strip() for i in args.intents.split(",")] if args.intents else list(INTENTS)
    bar, progress = progress_bar("sheet", "run", args.quiet)
    sheet = comparison_sheet(args.folder, models, intents, size=args.size, device=args.device, progress=progress)
    bar.close()
    write_image(args.out, sheet)
    out.write(f"wrote {args.out}: columns = the painting, then {', '.join(models)} × {', '.join(intents)}\n")
    return 0


def cmd_strip(args, out) -> int:
    from ..box import Box
    from ..imageio import write_image
    from ..rig import character_schema
    from ..sheet import INTENTS, intent_values, interpolation_strip, scene_strip

    models = [m for m in args.models.split(",") if m]
    if args.scene:
        if args.intent or args.set:
            raise KeyfaceError("give a --scene, or an --intent or --set values, not both")
        from ..motion import read_reference
        from ..scene import load_scene

        reference = read_reference(args.reference)[0] if args.reference else None
        strip = scene_strip(args.image, models, load_scene(args.scene), args.frames, args.size,
                            Box.parse(args.box) if args.box else None, args.device, reference,
                            Box.parse(args.reference_box) if args.reference_box else None)
        write_image(args.out, strip)
        out.write(f"wrote {args.out}: {len(models) + (reference is not None)} row(s) × {args.frames} frames of "
                  f"{args.scene}\n")
        return 0
    if args.reference:
        raise KeyfaceError("--reference goes with --scene")
    if args.intent and args.set:
        raise KeyfaceError("give an --intent or --set values, not both")
    if args.set:
        rig = character_schema()
        target = rig.defaults.astype(np.float64).copy()
        for name, value in args.set:
            target[rig.index(name)] = value
        target = rig.validate(target[None])[0]
    else:
        name = args.intent or "open mouth"
        if name not in INTENTS:
            raise KeyfaceError(f"unknown intent {name!r} (known: {', '.join(INTENTS)})")
        target = intent_values([name])[0]
    strip = interpolation_strip(args.image, models, target, args.frames, args.size,
                                Box.parse(args.box) if args.box else None, args.device)
    write_image(args.out, strip)
    out.write(f"wrote {args.out}: {len(models)} row(s) × {args.frames} frames\n")
    return 0


def cmd_edit(args, out) -> int:
    try:
        from keyface.ui.app import main as editor
    except ImportError as exc:
        raise KeyfaceError(f"the editor needs PyQt5: {exc}") from None
    return editor(args.path, device=args.device)


def add(cmds) -> None:
    sub = cmds.top
    m = sub.add_parser("models", help="list the generators and the parameter schemas that drive them")
    m.add_argument("--schema", metavar="NAME", help="list one schema's channels and what its converter drops")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(run=cmd_models)

    kv = sub.add_parser("keys-from-video", help="read a reference clip's head pose and expression and write them as "
                                                 "editable keys of a scene")
    kv.add_argument("reference", metavar="REFERENCE", help="a movie (mp4, mov, webm, gif) or a folder of frames")
    kv.add_argument("--model", default="stylemap-kp", help="a model that reads motion (default stylemap-kp)")
    kv.add_argument("--out", required=True, metavar="SCENE.json")
    kv.add_argument("--schema", metavar="NAME", help="the keys' schema: kp (default: the model's), character, tha45, "
                                                     "au17, … (converted through the character rig)")
    kv.add_argument("--tolerance", type=float, default=0.005,
                    help="largest error of the reduced curves, as a fraction of each channel's range (default 0.005)")
    kv.add_argument("--smooth", type=float, default=1.0, help="Gaussian smoothing over frames (σ; 0: none)")
    kv.add_argument("--source", metavar="IMAGE", help="the character the scene animates (default: the reference's "
                                                      "first frame, written beside the scene)")
    kv.add_argument("--box", metavar="x,y,w,h", help="the reference's face box (default: the model's, on frame 0)")
    kv.add_argument("--fps", type=positive, help="frame rate (default: the movie's, or 24 for a folder)")
    kv.add_argument("--max-frames", type=positive_int, help="read at most this many frames")
    kv.add_argument("--device", default="cpu")
    kv.add_argument("--quiet", action="store_true", help="no progress bar")
    kv.set_defaults(run=cmd_keys_from_video)

    s = sub.add_parser("scene", help="work with scene files")
    ssub = s.add_subparsers(dest="scene_command", required=True, metavar="ACTION")
    c = ssub.add_parser("check", help="validate a scene and print its sampled channel values")
    c.add_argument("file", metavar="FILE", help="scene JSON file")
    c.add_argument("--frames", type=frames_arg, metavar="FIRST:LAST",
                   help="frames to sample, inclusive (default: the scene's frame_range)")
    c.add_argument("--step", type=positive, default=1.0, help="sampling step in frames (fractions allowed)")
    c.add_argument("--channels", metavar="A,B,...", help="channels to print (default: those with keys)")
    c.add_argument("--json", action="store_true", help="machine-readable output (frames, values, warnings)")
    c.set_defaults(run=cmd_scene_check)

    r = sub.add_parser("reswarp", help="lift a generator's low-res result to the source's full resolution")
    r.add_argument("--source", required=True, help="full-resolution image (PNG/TIFF, RGB or RGBA, 8/16-bit)")
    r.add_argument("--low", required=True, help="the generator's result for the box, at its grid size")
    r.add_argument("--flow", required=True, metavar="FLOW.npy|estimate",
                   help="backward flow, float32 (h, w, 2) in low-res pixels; 'estimate' computes it (DIS optical "
                        "flow between the box at the grid size and LOW)")
    r.add_argument("--box", metavar="x,y,w,h", help="region the generator saw (default: the whole image)")
    r.add_argument("--mode", choices=("multiscale", "vanilla"), default="multiscale")
    r.add_argument("--interp", choices=("cubic", "linear"), default="cubic", help="residual warp interpolation")
    r.add_argument("--feather", type=int, help="compositing ramp in pixels (default: 1/16 of the box's smaller side)")
    r.add_argument("--out", required=True, help="output image (.png or .tiff); written atomically")
    r.set_defaults(run=cmd_reswarp)

    rr = sub.add_parser("render", help="render a scene's frames at the source's full resolution")
    rr.add_argument("scene", metavar="SCENE.json", nargs="+", help="one or more scenes (each into its own folder)")
    rr.add_argument("--out", help="output folder (default: the scene's output.directory); for a movie, the movie file "
                                  "(default: that folder's name + the format's extension, e.g. frames.mp4)")
    rr.add_argument("--frames", type=frames_arg, metavar="FIRST:LAST", help="inclusive (default: the scene's range)")
    rr.add_argument("--format", choices=("png", "tiff", "exr", *MOVIE_FORMATS),
                    help="default: the scene's output.format (EXR: linear, premultiplied, half float; mp4: H.264; "
                         "mov: ProRes 4444 with alpha; webm: VP9 with alpha; gif)")
    rr.add_argument("--quality", type=quality_arg, metavar="Q",
                    help="movies: mp4 CRF 0–51 (default 18), webm CRF 0–63 (24), mov 4444 or 4444xq, gif colours "
                         "2–256")
    rr.add_argument("--background", type=colour_arg, metavar="#RRGGBB",
                    help="mp4 and gif: the colour under transparent areas (default: the scene's, white)")
    rr.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    rr.add_argument("--resume", action="store_true", help="keep frames already written, render the rest")
    rr.add_argument("--batch", type=positive_int, help="frames per generator batch (default: the model's own)")
    rr.add_argument("--quiet", action="store_true", help="no progress bar")
    where = rr.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, metavar="N",
                       help="render on a local Dask cluster of N worker processes (needs keyface[cluster])")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="render on the running Dask cluster at ADDRESS (tcp://HOST:8786); the workers write into "
                            "the output folder, which they must share with this machine, unless --gather")
    rr.add_argument("--gather", action="store_true",
                    help="cluster renders: send each frame back to this machine, which writes it")
    rr.add_argument("--chunk", type=positive_int, metavar="N",
                    help="cluster renders: frames per task, rounded to whole batches (default: about 4 tasks per "
                         "worker)")
    rr.set_defaults(run=cmd_render)

    po = sub.add_parser("pose", help="one full-resolution frame of an image with set expression values")
    po.add_argument("image", metavar="IMAGE")
    po.add_argument("--model", required=True, help="generator (keyface models), or tha4-student:FOLDER")
    po.add_argument("--set", type=set_arg, action="append", metavar="CHANNEL=VALUE",
                    help="a channel of the model's schema, e.g. AU12=3 (repeatable; others stay at rest)")
    po.add_argument("--box", metavar="x,y,w,h",
                    help="face box (THA's head box; default: detected; a square image with a THA model: its frame)")
    po.add_argument("--raw", metavar="OUT.npy", help="also save the generator's own output (float32, its native "
                                                     "convention; THA4: linear premultiplied [-1, 1], 4×512×512)")
    po.add_argument("--from-fit", metavar="FIT.json",
                    help="take the expression and head pose of another face's fit (keyface fit3dmm --out), keeping "
                         "this image's identity (models that fit a 3DMM, e.g. f3a-3dmm); --set applies on top")
    po.add_argument("--mode", choices=("multiscale", "vanilla"), default="multiscale", help="ResWarp mode")
    po.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    po.add_argument("--out", required=True, help="output image (.png or .tiff), written atomically")
    po.set_defaults(run=cmd_pose)

    sh = sub.add_parser("sheet", help="pose every painting in a folder with each model, side by side, with the same "
                                      "intents (blink, open mouth, smile, head turn)")
    sh.add_argument("folder", metavar="DIR", help="folder of images (PNG/TIFF/JPEG/EXR)")
    sh.add_argument("--models", metavar="A,B", help="models to compare (default: every installed one)")
    sh.add_argument("--intents", metavar="A,B", help="from: blink, open mouth, smile, head turn (default: all)")
    sh.add_argument("--size", type=positive_int, default=192, help="tile side in pixels (default 192)")
    sh.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    sh.add_argument("--quiet", action="store_true", help="no progress bar")
    sh.add_argument("--out", required=True, help="the sheet (.png), written atomically")
    sh.set_defaults(run=cmd_sheet)

    st = sub.add_parser("strip", help="key-to-key continuity: each model's frames from rest to a target (or along a "
                                      "scene's keys), side by side")
    st.add_argument("image", metavar="IMAGE")
    st.add_argument("--models", required=True, metavar="A,B", help="models, one row each (e.g. f3a-3dmm,tha3)")
    st.add_argument("--intent", metavar="NAME", help="blink, open mouth, smile or head turn (default: open mouth)")
    st.add_argument("--set", type=set_arg, action="append", metavar="CHANNEL=VALUE",
                    help="the target in the character rig instead of an intent (repeatable)")
    st.add_argument("--scene", metavar="SCENE.json", help="the keys of a scene instead of rest → target (e.g. from "
                                                          "keyface keys-from-video), sampled over its frame range")
    st.add_argument("--reference", metavar="MOVIE|FOLDER", help="with --scene: a clip shown as the first row (the "
                                                                "reference the keys were read from)")
    st.add_argument("--reference-box", metavar="x,y,w,h", help="the reference's face box (default: detected)")
    st.add_argument("--frames", type=positive_int, default=8, help="frames from rest to the target (default 8)")
    st.add_argument("--size", type=positive_int, default=160, help="tile side in pixels (default 160)")
    st.add_argument("--box", metavar="x,y,w,h", help="the face box (default: detected, or THA's for a 512² image)")
    st.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    st.add_argument("--out", required=True, help="the strip (.png), written atomically")
    st.set_defaults(run=cmd_strip)

    ed = sub.add_parser("edit", help="the desktop editor (canvas, parameters, keyframe timeline, preview, render)")
    ed.add_argument("path", nargs="?", metavar="IMAGE|SCENE", help="an image or a scene to open")
    ed.add_argument("--device", default="cpu", help="cpu, cuda or auto (previews and renders)")
    ed.set_defaults(run=cmd_edit)
