"""The ``keyface`` command line: one subcommand per user job.

Errors caused by input print one clear message (``keyface: error: ...``) and exit with status 2; an interrupted
command exits with 130.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import KeyfaceError
from .models import available_models
from .rig import get_converter, get_schema, schema_names
from .scene import check_source, load_scene


def _frames_arg(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        first, last = int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST (inclusive integers), got {text!r}") from None
    if last < first:
        raise argparse.ArgumentTypeError(f"last frame {last} is before first frame {first}")
    return first, last


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _table(rows: list[list[str]], out) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n")


def cmd_models(args, out) -> int:
    models = available_models()
    if args.json:
        doc = {"models": [{"id": m.id, "method": m.method, "schema": m.schema_name, "description": m.description}
                          for m in models],
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
        _table(rows, out)
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
        _table([[m.id, m.method, m.schema_name, m.description] for m in models], out)
    else:
        out.write("  none installed yet\n")
    out.write("\nSchemas (keyface models --schema NAME lists the channels):\n")
    _table([["  " + n, f"{len(get_schema(n))} channels", get_schema(n).description] for n in schema_names()], out)
    out.write("  3dmm:KxL  a 3DMM schema with K identity and L expression coefficients\n")
    return 0


def cmd_scene_check(args, out) -> int:
    scene = load_scene(args.file)
    width, height = check_source(scene)
    first, last = args.frames or scene.frame_range
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
    if args.json:
        doc = {"ok": True, "frames": frames.tolist(), "values": {n: values[:, i].tolist() for n, i in zip(names, idx,
                                                                                                        strict=True)}}
        out.write(json.dumps(doc) + "\n")
        return 0
    box = "automatic" if scene.face_box is None else "x={} y={} w={} h={}".format(*scene.face_box)
    out.write(f"{args.file}: OK\n  schema {scene.schema.name}, model {scene.model or '(none)'}, "
              f"frames {scene.frame_range[0]}–{scene.frame_range[1]} at {scene.fps:g} fps\n"
              f"  source {scene.source} ({width}×{height}), face box {box}\n"
              f"  output {scene.output.format} {scene.output.bit_depth}-bit, ResWarp {scene.output.reswarp}, "
              f"into {scene.output.directory}/\n")
    over = [scene.schema.names[i] for i in range(len(scene.schema)) if np.any(raw[:, i] != values[:, i])]
    for n in over:
        out.write(f"  warning: {n}'s curve goes past its range (user handles); sampled values are held at the limit\n")
    if not names:
        out.write("  no tracks: every frame is the rest pose\n")
        return 0
    digits = 0 if float(args.step).is_integer() else 3
    rows = [["frame"] + names] + [[f"{f:.{digits}f}"] + [f"{values[r, i]:.3f}" for i in idx]
                                  for r, f in enumerate(frames)]
    _table(rows, out)
    return 0


def cmd_reswarp(args, out) -> int:
    from .imageio import read_image, write_image
    from .reswarp import Box, Lifter, ResWarpError, estimate_flow

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
    grid = low.shape[:2]
    lifter = Lifter(source, box, grid=grid, mode=args.mode, interp=args.interp, feather=args.feather)
    if flow is None:
        flow = estimate_flow(lifter.low_input(), low)
    write_image(args.out, lifter.lift(low, flow))
    out.write(f"wrote {args.out} ({source.shape[1]}×{source.shape[0]}, {args.mode})\n")
    return 0


def cmd_bench_reswarp(args, out) -> int:
    from .bench import METHODS, SCENES, bench_reswarp

    def pick(text, allowed, what):
        chosen = [v.strip() for v in text.split(",")] if text else list(allowed)
        bad = [v for v in chosen if v not in allowed]
        if bad:
            raise KeyfaceError(f"unknown {what} {', '.join(bad)} (choose from {', '.join(allowed)})")
        return chosen

    bench_reswarp(args.sizes.split(","), repeat=args.repeat, out=out, quality=not args.no_quality,
                  scenes=pick(args.scenes, SCENES, "scene"), methods=pick(args.methods, METHODS, "method"))
    return 0


def cmd_synth(args, out) -> int:
    if args.sheet:
        from .imageio import write_image
        from .synth.sheet import contact_sheet

        seeds = range(args.seed, args.seed + args.characters)
        write_image(args.sheet, contact_sheet(seeds, size=args.size))
        out.write(f"wrote {args.sheet}: {args.characters} characters at rest and in 8 poses\n")
        return 0
    from tqdm import tqdm

    from .synth.dataset import SynthConfig, write_dataset

    cfg = SynthConfig(characters=args.characters, poses_per_character=args.poses_per_character, size=args.size,
                      seed=args.seed, test_fraction=args.test_fraction, framing=args.framing, poses=args.poses,
                      project=args.project).check()
    bar = tqdm(total=cfg.characters, unit="char", desc="synth", disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    manifest = write_dataset(args.out, cfg, workers=args.workers, progress=progress)
    bar.close()
    n = {split: sum(s["samples"] for s in manifest["shards"].values() if s["split"] == split)
         for split in manifest["splits"]}
    out.write(f"wrote {args.out}: {n.get('train', 0)} train and {n.get('test', 0)} test pairs at "
              f"{cfg.size}² ({len(manifest['splits']['train'])} + {len(manifest['splits']['test'])} characters)\n")
    return 0


def cmd_render(args, out) -> int:
    from tqdm import tqdm

    from .pipeline import render_scene

    scene = load_scene(args.scene)
    frames = None
    if args.frames:
        first, last = args.frames
        frames = range(first, last + 1)
    bar = tqdm(total=0, unit="frame", desc="render", disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        written = render_scene(scene, args.out, frames=frames, fmt=args.format, device=args.device,
                               resume=args.resume, batch=args.batch, progress=progress)
    except KeyboardInterrupt:
        bar.close()
        out.write("interrupted; finished frames are kept: rerun with --resume\n")
        return 130
    bar.close()
    out.write(f"wrote {len(written)} frames to {args.out or scene.output_dir}\n")
    return 0


def _set_arg(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}") from None


def cmd_pose(args, out) -> int:
    from .imageio import read_image, write_image
    from .models import get_model
    from .pipeline import FrameJob
    from .reswarp import Box

    info = get_model(args.model)
    schema = info.schema
    values = schema.defaults[None].copy()  # the rest pose, then the --set values
    for name, value in args.set or []:
        values[0, schema.index(name)] = value
    values = schema.validate(values)
    source = read_image(args.image)
    job = FrameJob.prepare(source, args.model, Box.parse(args.box) if args.box else None, args.device, args.mode)
    if args.raw:
        raw = getattr(job.runtime, "raw", None)
        if raw is None:
            raise KeyfaceError(f"model {args.model} has no raw output (--raw is for generators with their own "
                               "convention, e.g. THA4)")
        from .io import atomic_write_bytes

        buf = io.BytesIO()
        np.save(buf, raw(job.lifter.low_input()[None], job.schema.validate(values).astype(np.float32))[0])
        atomic_write_bytes(args.raw, buf.getvalue())
    write_image(args.out, job.frames(values)[0])
    out.write(f"wrote {args.out} ({source.shape[1]}×{source.shape[0]}, face box {job.box.x},{job.box.y},"
              f"{job.box.w},{job.box.h})\n")
    return 0


def cmd_edit(args, out) -> int:
    try:
        from keyface.ui.app import main as editor
    except ImportError as exc:
        raise KeyfaceError(f"the editor needs PyQt5: {exc}") from None
    return editor(args.path, device=args.device)


def _stop_on_sigterm() -> list:
    """A background job (``nohup … &``) ignores SIGINT: let ``kill`` (SIGTERM) stop training after the current step
    (checkpoint written). Returns a list that becomes non-empty once the signal came."""
    import signal

    came: list = []
    signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum))
    return came


def _run_training(trainer, args, out) -> int:
    """Progress bar, SIGTERM/SIGINT → checkpoint and exit 130, final message: the same for every method."""
    from tqdm import tqdm

    terminated = _stop_on_sigterm()
    bar = tqdm(total=trainer.cfg.steps, initial=trainer.step, unit="step", desc=trainer.method, disable=args.quiet)

    def progress(step, logs):
        bar.update(step - bar.n)
        bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()
                         if k in ("total", "img", "flow", "rec", "pair", "perc", "d_adv")})

    try:
        trainer.fit(progress, should_stop=lambda: bool(terminated))
    except KeyboardInterrupt:
        trainer.save()
        terminated.append("SIGINT")
    bar.close()
    if terminated:
        out.write(f"interrupted at step {trainer.step}; checkpoint saved, continue with --resume\n")
        return 130
    out.write(f"finished {trainer.step} steps: {args.out}/generator.safetensors\n")
    return 0


def cmd_train_atw(args, out) -> int:
    from tqdm import tqdm

    from .methods.atw.losses import LossWeights
    from .methods.atw.networks import ATWConfig
    from .methods.atw.trainer import TrainConfig, Trainer

    cfg = TrainConfig(data=args.data, steps=args.steps, batch=args.batch, mode=args.mode, seed=args.seed,
                      lr=args.lr, lr_schedule=args.lr_schedule, eval_every=args.eval_every,
                      eval_characters=args.eval_characters, init=args.init or "", model=ATWConfig(base=args.base),
                      weights=LossWeights(changed_per_sample=args.changed_per_sample,
                                          img_cancelled=args.cancelled_weight), select=args.select,
                      focus=dict(args.focus or ()))
    trainer = Trainer(cfg, args.out, device=args.device, resume=args.resume,
                      log=lambda msg: tqdm.write(msg, file=out))
    return _run_training(trainer, args, out)


def cmd_train_cptnet(args, out) -> int:
    from tqdm import tqdm

    from .methods.cptnet.losses import LossWeights
    from .methods.cptnet.networks import CPTNetConfig
    from .methods.cptnet.trainer import TrainConfig, Trainer

    decay = args.steps // 6 if args.decay_steps is None else args.decay_steps
    cfg = TrainConfig(data=args.data, steps=args.steps, batch=args.batch, mode=args.mode, seed=args.seed, lr=args.lr,
                      lr_schedule="linear_tail", decay_steps=decay, eval_every=args.eval_every,
                      eval_characters=args.eval_characters, features=args.features or "",
                      weights=LossWeights(changed=args.changed_weight, cancelled=args.cancelled_weight,
                                          cancelled_everywhere=args.cancelled_everywhere),
                      init=args.init or "",
                      expression_share=args.expression_share, wink_share=args.wink_share, flip=args.flip,
                      model=CPTNetConfig(base=args.base, blocks=args.blocks, k=args.k, variant=args.variant,
                                         coords=args.coords))
    trainer = Trainer(cfg, args.out, device=args.device, resume=args.resume,
                      log=lambda msg: tqdm.write(msg, file=out))
    return _run_training(trainer, args, out)


def cmd_train_tha4_teacher(args, out) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from .methods.tha4.teacher import EDITOR, HALF_ROTATOR, FaceTeacherConfig
    from .methods.tha4.train_teacher import TeacherConfig, TeacherTrainer

    if args.stage == "face":
        model = FaceTeacherConfig(base=args.base or 32)
    else:
        model = HALF_ROTATOR if args.stage == "rotator" else EDITOR
        mults = tuple(int(m) for m in args.mults.split(",")) if args.mults else model.mults
        model = replace(model, base=args.base or model.base, mults=mults)
    cfg = TeacherConfig(data=args.data, steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr,
                        beta1=0.5, warmup_steps=max(1, args.warmup_examples // args.batch), eval_every=args.eval_every,
                        eval_characters=args.eval_characters, stage=args.stage, model=model,
                        features=args.features or "", rotator=args.rotator or "", init=args.init or "")
    trainer = TeacherTrainer(cfg, args.out, device=args.device, resume=args.resume,
                             log=lambda msg: tqdm.write(msg, file=out))
    return _run_training(trainer, args, out)


def cmd_train_features(args, out) -> int:
    from tqdm import tqdm

    from .features import train_features

    bar = tqdm(total=args.steps, unit="step", desc="features", disable=args.quiet)

    def progress(step, logs):
        bar.update(step - bar.n)
        bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()})

    rec = train_features(args.data, args.out, steps=args.steps, batch=args.batch, width=args.width, seed=args.seed,
                         device=args.device, log=lambda m: None, progress=progress)
    bar.close()
    out.write(f"wrote {args.out}: held-out identity accuracy {rec['heldout_identity_accuracy']:.3f} over "
              f"{rec['characters']} characters, value MAE {rec['heldout_value_mae_scaled']:.4f} (scaled), "
              f"{rec['train_seconds']:.0f} s\n")
    return 0


def cmd_distill(args, out) -> int:
    import shutil

    import torch
    from tqdm import tqdm

    from .imageio import read_image
    from .methods.tha4.convention import to_official
    from .methods.tha4.distill import DistillConfig, Distiller, face_box
    from .models import get_model

    kind, _, folder = args.teacher.partition(":")
    if kind == "tha4-teacher":
        from .methods.tha4 import TEACHER
        from .methods.tha4.train_teacher import TeacherPipeline
        from .training import pick_device

        teacher = TeacherPipeline(folder or TEACHER, pick_device(args.device))
    elif kind == "tha4-student" and folder:
        teacher = get_model(args.teacher).load(args.device).student
    else:
        raise KeyfaceError(f"{args.teacher}: a teacher is tha4-teacher (keyface's shipped teacher), "
                           "tha4-teacher:FOLDER (face, rotator and editor .safetensors) or tha4-student:FOLDER (a THA4 "
                           "character model)")
    img = read_image(args.image)
    if img.shape != (512, 512, 4) or img.dtype != np.uint8:
        raise KeyfaceError(f"{args.image}: THA4 distills a 512×512 8-bit RGBA character image, got "
                           f"{img.shape[1]}×{img.shape[0]} {img.dtype}")
    # a reduced teacher works at its own size (e.g. 256²): the character and the mask are scaled down to it; the
    # students are coordinate networks, so the character model they make still renders at 512²
    size = getattr(teacher, "size", 512)
    image = to_official(img)
    if size != 512:
        image = torch.nn.functional.interpolate(image, size=(size, size), mode="area")
    mask = None
    if args.face_mask:
        m = read_image(args.face_mask)
        if m.shape[:2] != (512, 512):
            raise KeyfaceError(f"{args.face_mask}: the face mask must be 512×512 like the character")
        y0, y1, x0, x1 = face_box(512)
        m = m[y0:y1, x0:x1, :3].max(axis=2) if m.ndim == 3 else m[y0:y1, x0:x1]
        mask = torch.from_numpy((m > (m.max() / 2)).astype(np.float32))[None, None]
        if size != 512:  # a face-crop pixel is movable when any pixel it covers is
            mask = torch.nn.functional.adaptive_max_pool2d(mask, size // 4)
    cfg = DistillConfig(face_examples=args.face_examples, body_examples=args.body_examples, batch=args.batch,
                        size=size, seed=args.seed, eval_poses=args.eval_poses)
    d = Distiller(teacher, image, mask, args.out, cfg, device=str(teacher.device),
                  log=lambda m: tqdm.write(m, file=out))
    shutil.copyfile(args.image, Path(args.out) / "character.png")
    total = cfg.face_examples + cfg.body_examples
    bar = tqdm(total=total, initial=d.face_seen + d.body_seen, unit="ex", desc="distill", disable=args.quiet)
    terminated = _stop_on_sigterm()

    def progress(seen, logs):
        bar.update(seen - bar.n)
        bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("face_loss", "body_loss")})

    try:
        record = d.run(progress, should_stop=lambda: bool(terminated))
    except KeyboardInterrupt:
        d.save()
        record = None
    bar.close()
    if record is None:
        out.write("interrupted; checkpoint saved, run the same command again to continue\n")
        return 130
    r = record["student_vs_teacher"]
    out.write(f"character model in {args.out}: student vs teacher PSNR {r['psnr_mean']:.2f} dB over {r['poses']} "
              f"poses (min {r['psnr_min']:.2f}); use it with --model tha4-student:{args.out}\n")
    return 0


def cmd_eval_atw(args, out) -> int:
    from .methods.atw.evaluate import evaluate_render
    from .methods.atw.runtime import ATWRuntime
    from .methods.atw.trainer import format_eval
    from .synth.dataset import load_manifest

    seeds = load_manifest(args.data)["splits"]["test"][:args.characters]
    rows = evaluate_render(ATWRuntime(args.weights, args.device), seeds, args.size)
    out.write(f"ATW through the render path: {len(seeds)} held-out characters of {args.data} at {args.size}², "
              "face box\n" + format_eval(rows) + "\n")
    if args.json:
        from .io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


def cmd_eval_cptnet(args, out) -> int:
    from .methods.cptnet.trainer import ablation

    rows = ablation(args.weights, args.data, args.device, out=out)
    if args.json:
        from .io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


def cmd_eval_tha4_teacher(args, out) -> int:
    from .methods.tha4 import TEACHER
    from .methods.tha4.train_teacher import TeacherPipeline, evaluate_teacher
    from .training import pick_device

    teacher = TeacherPipeline(args.folder or TEACHER, pick_device(args.device))
    rows = {}
    for data in args.data:
        r = rows[data] = evaluate_teacher(teacher, data)
        out.write(f"{data}: {r['changed_pairs']} of {r['pairs']} held-out pairs changed by their pose, at "
                  f"{teacher.size}²: PSNR {r['psnr']:.2f} dB (identity "
                  f"{r['identity']:.2f}), face box {r['face_psnr']:.2f} dB (identity {r['face_identity']:.2f}; the "
                  f"face stage alone {r['face_stage_psnr']:.2f})\n")
    if args.json:
        from .io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0


def cmd_krita(args, out) -> int:
    from keyface.addon.krita import install

    action = install.install if args.krita_command == "install" else install.uninstall
    for line in action(args.pykrita, args.kritarc):
        out.write(line + "\n")
    return 0


def cmd_train_facebox(args, out) -> int:
    from pathlib import Path

    from .facebox import train_facebox

    info = train_facebox(Path(args.out), samples=args.samples, steps=args.steps, seed=args.seed,
                         log=lambda m: out.write(m + "\n"))
    out.write(f"wrote {args.out}: validation mean abs error (cx, cy, side) = "
              f"{', '.join(f'{v:.4f}' for v in info['val_abs_err_cx_cy_side'])} (fractions of the square)\n")
    return 0


def cmd_bench_render(args, out) -> int:
    from .bench import bench_render

    bench_render(args.scene, frames=args.frames, batch=args.batch, device=args.device, out=out)
    return 0


def cmd_bench_tha4(args, out) -> int:
    from .methods.tha4.bench import bench_tha4

    character = args.character
    if character is None:
        default = Path(__file__).resolve().parent.parent.parent / "shared" / "thirdparty" / "tha4" / \
            "character_models" / "lambda_00"
        if not default.is_dir():
            raise KeyfaceError("give --character DIR (an official THA4 character model folder)")
        character = default
    bench_tha4(character, repeat=args.repeat, device=args.device, out=out)
    return 0


def cmd_bench_synth(args, out) -> int:
    from .synth.bench import bench_synth

    sizes = [int(s) for s in args.sizes.split(",")]
    bench_synth(sizes, out=out, characters=args.characters, poses=args.poses)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keyface", description="Single-image character animation for artists.")
    p.add_argument("--version", action="version", version=f"keyface {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("models", help="list the generators and the parameter schemas that drive them")
    m.add_argument("--schema", metavar="NAME", help="list one schema's channels and what its converter drops")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(run=cmd_models)

    s = sub.add_parser("scene", help="work with scene files")
    ssub = s.add_subparsers(dest="scene_command", required=True, metavar="ACTION")
    c = ssub.add_parser("check", help="validate a scene and print its sampled channel values")
    c.add_argument("file", metavar="FILE", help="scene JSON file")
    c.add_argument("--frames", type=_frames_arg, metavar="FIRST:LAST",
                   help="frames to sample, inclusive (default: the scene's frame_range)")
    c.add_argument("--step", type=_positive, default=1.0, help="sampling step in frames (fractions allowed)")
    c.add_argument("--channels", metavar="A,B,...", help="channels to print (default: those with keys)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
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

    y = sub.add_parser("synth", help="render a synthetic paired dataset (or a contact sheet) of procedural characters")
    what = y.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", metavar="DIR", help="dataset folder (sharded .npz + manifest.json; resumes)")
    what.add_argument("--sheet", metavar="FILE.png", help="write a contact sheet instead: characters at rest and in "
                                                         "8 poses")
    y.add_argument("--characters", type=int, default=16, help="number of characters (default 16)")
    y.add_argument("--poses-per-character", type=int, default=20, help="posed samples per character (default 20)")
    y.add_argument("--size", type=int, default=128, help="square image size in pixels (default 128; sheet: 256)")
    y.add_argument("--seed", type=int, default=0, help="dataset seed (sheet: first character seed)")
    y.add_argument("--test-fraction", type=float, default=0.1, help="share of characters held out for testing")
    y.add_argument("--framing", choices=("full", "face", "head"), default="full",
                   help="full: upper body in the THA placement; face: the face box fills the image; head: the head "
                        "with its hair, room to turn (CPTNet)")
    y.add_argument("--poses", choices=("all", "expression", "rotation"), default="all",
                   help="expression: head and body stay at rest (expression generators); rotation: the face stays at "
                        "rest (THA's body rotator)")
    y.add_argument("--project", metavar="SCHEMA", help="keep only expressions this schema represents (e.g. au17)")
    y.add_argument("--workers", type=int, help="processes (default: one per core)")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    y.set_defaults(run=cmd_synth)

    rr = sub.add_parser("render", help="render a scene's frames at the source's full resolution")
    rr.add_argument("scene", metavar="SCENE.json")
    rr.add_argument("--out", help="output folder (default: the scene's output.directory)")
    rr.add_argument("--frames", type=_frames_arg, metavar="FIRST:LAST", help="inclusive (default: the scene's range)")
    rr.add_argument("--format", choices=("png", "tiff", "exr"),
                    help="default: the scene's output.format (EXR: linear, premultiplied, half float)")
    rr.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    rr.add_argument("--resume", action="store_true", help="keep frames already written, render the rest")
    rr.add_argument("--batch", type=_positive_int, default=4, help="frames per generator batch")
    rr.add_argument("--quiet", action="store_true", help="no progress bar")
    rr.set_defaults(run=cmd_render)

    po = sub.add_parser("pose", help="one full-resolution frame of an image with set expression values")
    po.add_argument("image", metavar="IMAGE")
    po.add_argument("--model", required=True, help="generator (keyface models), or tha4-student:FOLDER")
    po.add_argument("--set", type=_set_arg, action="append", metavar="CHANNEL=VALUE",
                    help="a channel of the model's schema, e.g. AU12=3 (repeatable; others stay at rest)")
    po.add_argument("--box", metavar="x,y,w,h", help="face box (default: detected; THA4: the square image)")
    po.add_argument("--raw", metavar="OUT.npy", help="also save the generator's own output (float32, its native "
                                                     "convention; THA4: linear premultiplied [-1, 1], 4×512×512)")
    po.add_argument("--mode", choices=("multiscale", "vanilla"), default="multiscale", help="ResWarp mode")
    po.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    po.add_argument("--out", required=True, help="output image (.png or .tiff), written atomically")
    po.set_defaults(run=cmd_pose)

    ed = sub.add_parser("edit", help="the desktop editor (canvas, parameters, keyframe timeline, preview, render)")
    ed.add_argument("path", nargs="?", metavar="IMAGE|SCENE", help="an image or a scene to open")
    ed.add_argument("--device", default="cpu", help="cpu, cuda or auto (previews and renders)")
    ed.set_defaults(run=cmd_edit)

    t = sub.add_parser("train", help="train a generator")
    tsub = t.add_subparsers(dest="train_command", required=True, metavar="METHOD")
    def run_args(tp, default_batch: int, default_lr_help: str, run) -> None:
        """The options every generator trainer has."""
        tp.add_argument("--data", required=True, help="dataset folder written by keyface synth")
        tp.add_argument("--out", required=True, help="run folder (checkpoints, log, final generator)")
        tp.add_argument("--steps", type=_positive_int, default=2000, help="generator steps in all (default 2000)")
        tp.add_argument("--batch", type=_positive_int, default=default_batch)
        tp.add_argument("--lr", type=_positive, default=1e-4, help=default_lr_help)
        tp.add_argument("--eval-every", type=_positive_int, default=250, help="steps between evaluations")
        tp.add_argument("--eval-characters", type=_positive_int, default=8,
                        help="validation characters (in neither split of the dataset) for evaluations and the best "
                             "checkpoint (best.safetensors)")
        tp.add_argument("--seed", type=int, default=0)
        tp.add_argument("--device", default="auto", help="auto, cpu or cuda")
        tp.add_argument("--resume", action="store_true", help="continue the run in --out")
        tp.add_argument("--init", metavar="WEIGHTS",
                        help="start the generator from these weights (.safetensors with its .json; their architecture "
                             "replaces the model options, and weights without AdaIN-conditioned blocks get them, "
                             "started at zero)")
        tp.add_argument("--quiet", action="store_true", help="no progress bar")
        tp.set_defaults(run=run)

    ta = tsub.add_parser("atw", help="ATW (seed 004) on a synthetic dataset (keyface synth --framing face "
                                     "--poses expression --project au17)")
    run_args(ta, 16, "Adam learning rate (the paper: 1e-4)", cmd_train_atw)
    ta.add_argument("--mode", choices=("supervised", "gan", "both"), default="supervised",
                    help="supervised (paired corpus), gan (the paper's five losses), or both")
    ta.add_argument("--base", type=_positive_int, default=16, help="channel width of the first layer")
    ta.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                    help="constant (the paper) or cosine decay to 5%% of --lr at --steps")
    ta.add_argument("--changed-per-sample", action="store_true",
                    help="average the changed-pixel losses within each sample first (small expressions such as a "
                         "smile weigh as much as a blink)")
    ta.add_argument("--cancelled-weight", type=float, default=0.0, metavar="W",
                    help="weight of the bias-cancelled changed-pixel L1 (our addition; 0 = off)")
    ta.add_argument("--select", choices=("mean", "worst"), default="mean",
                    help="best checkpoint by the mean PSNR gain over blink, mouth open and smile, or by the worst one")
    ta.add_argument("--focus", type=_set_arg, action="append", metavar="AU=F",
                    help="draw fraction F of each batch from the pairs with that action unit at intensity ≥ 2.5, e.g. "
                         "AU12=0.25 (repeatable; our addition; default uniform batches)")
    tc = tsub.add_parser("cptnet", help="CPTNet (seed 000) on a synthetic dataset (keyface synth --framing head "
                                        "--project pose5)")
    run_args(tc, 8, "Adam learning rate (the paper: 1e-4, batch 8)", cmd_train_cptnet)
    tc.add_argument("--mode", choices=("both", "supervised"), default="both",
                    help="both: the paper's adversarial + L1 + perceptual loss; supervised: L1 + perceptual")
    tc.add_argument("--variant", choices=("mask", "grid", "mask+grid", "mask+grid+ms"), default="mask+grid+ms",
                    help="head stage of the ablation (Table 1); default the full model")
    tc.add_argument("--k", type=_positive_int, default=4, help="cascade steps of the mask branch (default 4)")
    tc.add_argument("--base", type=_positive_int, default=16, help="channel width of the first layer (StarGAN: 64)")
    tc.add_argument("--blocks", type=_positive_int, default=6, help="residual blocks (default 6)")
    tc.add_argument("--decay-steps", type=int, default=None,
                    help="linear decay to zero over the last N steps (default: the paper's 1/6 of --steps)")
    tc.add_argument("--features", metavar="WEIGHTS", help="feature network for the perceptual loss (default: shipped)")
    tc.add_argument("--changed-weight", type=float, default=0.0, metavar="W",
                    help="weight of the L1 over the pixels the pose changes (our addition; 0 = the paper's loss; "
                         "the shipped model: 1000)")
    tc.add_argument("--cancelled-weight", type=float, default=0.0, metavar="W",
                    help="weight of the changed-pixel L1 of the bias-cancelled output, G(I, pose) − G(I, rest), as "
                         "the render path applies it (our addition; 0 = off)")
    tc.add_argument("--cancelled-everywhere", action="store_true",
                    help="take the cancelled term over every pixel (per changed pixel), so changes the pose does not "
                         "ask for cost as much as missed ones (our addition)")
    for flag, pairs in (("--expression-share", "pairs that move the eyes or the mouth"),
                        ("--wink-share", "pairs that close one eye more than the other")):
        tc.add_argument(flag, type=float, default=0.0, metavar="F",
                        help=f"fraction of each batch drawn from {pairs} (our addition; 0 = uniform, the paper)")
    tc.add_argument("--coords", action="store_true",
                    help="give the trunk the pixel coordinates (CoordConv; our addition; with --init, weights without "
                         "them are upgraded: the new input weights start at zero)")
    tc.add_argument("--flip", action="store_true",
                    help="mirror half of the pairs left-right, swapping the eyes and the sign of yaw (our addition)")
    th = tsub.add_parser("tha4-teacher", help="a stage of keyface's THA4 teacher (seed 001 App. A–B) on a synthetic "
                                              "dataset (keyface synth --framing full --project tha45)")
    run_args(th, 16, "Adam learning rate after the warm-up (the paper: 1e-4)", cmd_train_tha4_teacher)
    th.add_argument("--warmup-examples", type=_positive_int, default=5000,
                    help="examples of the linear learning-rate warm-up (the paper: 5,000)")
    th.add_argument("--stage", choices=("face", "rotator", "editor"), required=True,
                    help="face: the face morpher (data --poses expression); rotator: the half-resolution rotator; "
                         "editor: the editor (data --poses rotation)")
    th.add_argument("--rotator", metavar="WEIGHTS", help="editor: the trained rotator's generator.safetensors")
    th.add_argument("--base", type=_positive_int, help="base channels (Table 8: rotator 64, editor 32; face 32)")
    th.add_argument("--mults", metavar="A,B,…", help="U-Net channel multipliers (Table 8 by default)")
    th.add_argument("--features", metavar="WEIGHTS", help="feature network for the perceptual loss (default: shipped)")
    tv = tsub.add_parser("features", help="the VGG19-shaped feature network for perceptual losses, on a synthetic "
                                          "dataset (identity classification + rig regression)")
    tv.add_argument("--data", required=True, help="dataset folder written by keyface synth")
    tv.add_argument("--out", required=True, help="weights file (.safetensors; a .json record is written beside)")
    tv.add_argument("--steps", type=_positive_int, default=3000)
    tv.add_argument("--batch", type=_positive_int, default=32)
    tv.add_argument("--width", type=_positive, default=0.25, help="channel multiplier of VGG19's widths")
    tv.add_argument("--seed", type=int, default=0)
    tv.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tv.add_argument("--quiet", action="store_true", help="no progress bar")
    tv.set_defaults(run=cmd_train_features)
    tf = tsub.add_parser("facebox", help="the automatic face box regressor, on synthetic characters")
    tf.add_argument("--out", required=True, help="weights file (.safetensors; a .json with metrics is written beside)")
    tf.add_argument("--samples", type=_positive_int, default=4000)
    tf.add_argument("--steps", type=_positive_int, default=3000)
    tf.add_argument("--seed", type=int, default=0)
    tf.set_defaults(run=cmd_train_facebox)

    di = sub.add_parser("distill", help="distill a THA4 teacher into a character model for one image (seed 001 §5)")
    di.add_argument("--teacher", required=True, help="tha4-teacher (keyface's shipped 256² teacher), "
                                                     "tha4-teacher:FOLDER (another) or tha4-student:FOLDER (a THA4 "
                                                     "character model)")
    di.add_argument("--image", required=True, help="the character: 512×512 RGBA PNG in the THA framing")
    di.add_argument("--face-mask", help="512×512 mask of the movable facial parts (white), for the λ_fm = 20 term")
    di.add_argument("--out", required=True, help="character model folder (resumes when it holds a checkpoint)")
    di.add_argument("--face-examples", type=_positive_int, default=1_000_000, help="the paper: 1,000,000")
    di.add_argument("--body-examples", type=_positive_int, default=1_500_000, help="the paper: 1,500,000")
    di.add_argument("--batch", type=_positive_int, default=8)
    di.add_argument("--eval-poses", type=_positive_int, default=1000, help="poses for the final student-vs-teacher "
                                                                           "PSNR (the paper: 1,000)")
    di.add_argument("--seed", type=int, default=0)
    di.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    di.add_argument("--quiet", action="store_true", help="no progress bar")
    di.set_defaults(run=cmd_distill)

    ev = sub.add_parser("eval", help="evaluate trained generators on held-out synthetic characters")
    evsub = ev.add_subparsers(dest="eval_command", required=True, metavar="METHOD")
    ea = evsub.add_parser("atw", help="through the whole render path (face-box PSNR / SSIM vs the identity baseline)")
    ea.add_argument("weights", help="generator weights (.safetensors with its .json)")
    ea.add_argument("--data", required=True, help="the dataset it was trained on (its test characters are used)")
    ea.add_argument("--characters", type=_positive_int, default=12, help="held-out characters (default 12)")
    ea.add_argument("--size", type=_positive_int, default=512, help="character image size (default 512)")
    ea.add_argument("--device", default="cpu")
    ea.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ea.set_defaults(run=cmd_eval_atw)
    ec = evsub.add_parser("cptnet", help="the ablation table (seed 000 Table 1: L1, RMSE, SSIM) on the test split")
    ec.add_argument("weights", nargs="+", help="one generator per variant (runs of equal budget)")
    ec.add_argument("--data", required=True, help="dataset (its test split: held-out characters)")
    ec.add_argument("--device", default="cpu")
    ec.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ec.set_defaults(run=cmd_eval_cptnet)
    et = evsub.add_parser("tha4-teacher", help="the assembled THA4 teacher on held-out pairs (PSNR, whole image and "
                                               "face box, vs the identity baseline)")
    et.add_argument("folder", nargs="?", help="teacher folder (face, rotator and editor .safetensors; default: the "
                                              "shipped teacher)")
    et.add_argument("--data", required=True, nargs="+", help="datasets at the teacher's size (their test splits)")
    et.add_argument("--device", default="cpu")
    et.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    et.set_defaults(run=cmd_eval_tha4_teacher)

    k = sub.add_parser("krita", help="install or remove the Krita plugin (a keyface docker)")
    ksub = k.add_subparsers(dest="krita_command", required=True, metavar="ACTION")
    for name, text in (("install", "put the plugin in Krita's pykrita folder and enable it (run with Krita closed)"),
                       ("uninstall", "remove the plugin and its kritarc entry")):
        kp = ksub.add_parser(name, help=text)
        kp.add_argument("--pykrita", metavar="DIR", help="Krita's pykrita folder (default: this platform's)")
        kp.add_argument("--kritarc", metavar="FILE", help="Krita's settings file (default: this platform's)")
        kp.set_defaults(run=cmd_krita)

    b = sub.add_parser("bench", help="benchmarks (print a table)")
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    br = bsub.add_parser("reswarp", help="ResWarp time and peak memory per frame, against a naive reference")
    br.add_argument("--sizes", default="1k,2k,4k,8k", help="comma-separated: 1k, 2k, 4k, 8k")
    br.add_argument("--repeat", type=int, default=5, help="timed runs per cell (median)")
    br.add_argument("--scenes", metavar="A,B", help="expression, head, frame (default: all)")
    br.add_argument("--methods", metavar="A,B", help="copy, remap-floor, naive, {vanilla,multiscale}-{cpu,torch} "
                                                     "(default: all; copy and naive are needed for the ratios)")
    br.add_argument("--no-quality", action="store_true", help="skip the PSNR table")
    br.set_defaults(run=cmd_bench_reswarp)
    bn = bsub.add_parser("render", help="whole-frame render time (generator, ResWarp, encode) and peak memory")
    bn.add_argument("scene", nargs="?", default=str(Path(__file__).parent / "data" / "example" / "scene.json"),
                    help="scene (default: the bundled 4K example)")
    bn.add_argument("--frames", type=_positive_int, default=12)
    bn.add_argument("--batch", type=_positive_int, default=4)
    bn.add_argument("--device", default="cpu")
    bn.set_defaults(run=cmd_bench_render)
    bt = bsub.add_parser("tha4", help="THA4 student frame time: keyface's evaluator vs layer by layer, same weights")
    bt.add_argument("--character", metavar="DIR", help="official character model folder (default: "
                                                       "../shared/thirdparty/tha4/character_models/lambda_00)")
    bt.add_argument("--repeat", type=_positive_int, default=10, help="timed frames (median), after 2 warm-up")
    bt.add_argument("--device", default="cpu", help="cpu or cuda")
    bt.set_defaults(run=cmd_bench_tha4)
    bs = bsub.add_parser("synth", help="synthetic pairs per second, and one 4K pair")
    bs.add_argument("--sizes", default="128,256,512", help="comma-separated square sizes")
    bs.add_argument("--characters", type=int, default=8, help="characters per cell")
    bs.add_argument("--poses", type=int, default=20, help="poses per character")
    bs.set_defaults(run=cmd_bench_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args, sys.stdout)
    except KeyfaceError as e:
        sys.stderr.write(f"keyface: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("keyface: interrupted\n")
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
