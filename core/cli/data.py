"""Data and helper networks: synthetic corpora and contact sheets, the perceptual feature network, the face box
detector."""

from __future__ import annotations

from pathlib import Path

from ..errors import KeyfaceError
from ..synth.character import FAMILIES
from .common import positive, positive_int, progress_bar, write_json


def cmd_synth(args, out) -> int:
    if args.clip:
        from ..synth.sheet import render_clip

        if not args.out:
            raise KeyfaceError("--clip writes its frames into --out DIR")
        n = render_clip(args.clip, args.out, seed=args.seed, size=args.size, framing=args.framing)
        out.write(f"wrote {args.out}: character {args.seed} following {args.clip}, {n} frames at {args.size}²\n")
        return 0
    if args.sheet:
        from ..imageio import write_image
        from ..synth.sheet import contact_sheet

        seeds = range(args.seed, args.seed + args.characters)
        write_image(args.sheet, contact_sheet(seeds, size=args.size))
        out.write(f"wrote {args.sheet}: {args.characters} characters at rest and in 8 poses\n")
        return 0
    from ..synth.dataset import SynthConfig, write_dataset

    cfg = SynthConfig(characters=args.characters, poses_per_character=args.poses_per_character, size=args.size,
                      seed=args.seed, test_fraction=args.test_fraction, framing=args.framing, poses=args.poses,
                      project=args.project, styles=_families(args.styles),
                      test_styles=_families(args.test_styles)).check()
    bar, progress = progress_bar("synth", "char", args.quiet, cfg.characters)
    manifest = write_dataset(args.out, cfg, workers=args.workers, progress=progress)
    bar.close()
    n = {split: sum(s["samples"] for s in manifest["shards"].values() if s["split"] == split)
         for split in manifest["splits"]}
    out.write(f"wrote {args.out}: {n.get('train', 0)} train and {n.get('test', 0)} test pairs at "
              f"{cfg.size}² ({len(manifest['splits']['train'])} + {len(manifest['splits']['test'])} characters)\n")
    return 0


def cmd_corpus(args, out) -> int:
    from ..corpus import CorpusConfig, write_corpus

    test = list(args.test_paintings or [])
    cfg = CorpusConfig(teacher=args.teacher, student=args.student,
                       paintings=list(dict.fromkeys(list(args.paintings or []) + test)), test_paintings=test,
                       augment=args.augment,
                       characters=args.characters, styles=_families(args.styles),
                       test_styles=_families(args.test_styles), poses=args.poses,
                       poses_per_image=args.poses_per_image, balanced=args.balanced, seed=args.seed).check()
    bar, progress = progress_bar("corpus", "image", args.quiet)
    manifest = write_corpus(cfg, args.out, device=args.device, progress=progress)
    bar.close()
    n = {split: sum(s["samples"] for s in manifest["shards"].values() if s["split"] == split) for split in ("train",
                                                                                                          "test")}
    out.write(f"wrote {args.out}: {n['train']} train and {n['test']} test pairs from {cfg.teacher} for "
              f"{cfg.student} ({manifest['seconds']:.0f} s of work so far)\n")
    return 0


def cmd_adapt(args, out) -> int:
    from ..adapt import adapt
    from ..box import Box
    from ..imageio import read_image

    image = read_image(args.image)
    bars = {}

    def progress(phase, done, total):
        if phase not in bars:
            for bar, _ in bars.values():
                bar.close()
            unit = {"render": "pair", "fit": "s", "evaluate": "intent"}[phase]
            bars[phase] = progress_bar(f"adapt: {phase}", unit, args.quiet, round(total, 1))
        bars[phase][1](round(done, 1), round(total, 1))

    try:
        rec = adapt(args.model, image, args.out, box=Box.parse(args.box) if args.box else None, teacher=args.teacher,
                    minutes=args.minutes, seed=args.seed, device=args.device, progress=progress,
                    source_name=Path(args.image).name)
    finally:
        for bar, _ in bars.values():
            bar.close()
    e = rec["evaluation"]
    out.write(f"wrote {args.out}: use it as --model {rec['model_id']}\n"
              f"{rec['pairs']} teacher pairs, {rec['fit']['steps']} steps; on {e['intents']} unseen intents, head "
              f"region PSNR vs {rec['teacher']}: {e['adapted']['psnr_vs_teacher']:.2f} dB adapted, "
              f"{e['base']['psnr_vs_teacher']:.2f} dB before, {e['identity']['psnr_vs_teacher']:.2f} dB unchanged; "
              f"{e['speedup']:.1f}× the teacher's speed\n")
    return 0


def cmd_eval_styles(args, out) -> int:
    import numpy as np

    from ..crosseval import format_tables, painting_table, style_table
    from ..models import get_model

    ids = [m.strip() for m in args.models.split(",") if m.strip()]
    models = {m: get_model(m).load(args.device) for m in ids}
    families = _families(args.styles) or []
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise KeyfaceError(f"unknown style family {bad[0]!r} (one of {', '.join(FAMILIES)})")
    styles = paintings = None
    if families:
        bar, progress = progress_bar("styles", "char", args.quiet, len(families) * args.characters)
        styles = style_table(models, families, args.characters, args.seed, progress)
        bar.close()
    if args.paintings:
        teacher = get_model(args.teacher).load(args.device)
        bar, progress = progress_bar("paintings", "img", args.quiet, len(args.paintings))
        rows = [] if args.sheet else None
        paintings = painting_table(models, teacher, args.paintings, progress, rows)
        bar.close()
        if args.sheet:
            from ..crosseval import ACTIONS, supports
            from ..imageio import write_image

            write_image(args.sheet, np.concatenate(rows, axis=0))
            cols = [f"{a}: {', '.join([args.teacher] + ids)}" for a in ACTIONS if supports(teacher.schema, a)]
            out.write(f"wrote {args.sheet}: one row per painting (head region); columns: the painting, then "
                      f"{'; '.join(cols)}\n")
    out.write(format_tables(styles, paintings, families, args.teacher) + "\n")
    if args.json:
        write_json(args.json, {"models": ids, "styles": families, "characters_per_style": args.characters,
                               "seed": args.seed, "teacher": args.teacher, "paintings": list(args.paintings or []),
                               "held_out_styles": styles, "paintings_vs_teacher": paintings})
    return 0


def _families(text):
    return [f.strip() for f in text.split(",") if f.strip()] if text else None


def cmd_train_features(args, out) -> int:
    from ..features import train_features

    bar, move = progress_bar("features", "step", args.quiet, args.steps)
    rec = train_features(args.data, args.out, steps=args.steps, batch=args.batch, width=args.width, seed=args.seed,
                         device=args.device, log=lambda m: None,
                         progress=lambda step, logs: move(step, logs={k: f"{v:.3g}" for k, v in logs.items()}))
    bar.close()
    out.write(f"wrote {args.out}: held-out identity accuracy {rec['heldout_identity_accuracy']:.3f} over "
              f"{rec['characters']} characters, value MAE {rec['heldout_value_mae_scaled']:.4f} (scaled), "
              f"{rec['train_seconds']:.0f} s\n")
    return 0


def cmd_train_facebox(args, out) -> int:
    from ..facebox import train_facebox

    info = train_facebox(Path(args.out), samples=args.samples, steps=args.steps, seed=args.seed,
                         log=lambda m: out.write(m + "\n"), paintings=args.paintings or (),
                         held_out=args.held_out or (), painting_share=args.painting_share)
    out.write(f"wrote {args.out}: validation mean abs error (cx, cy, side) = "
              f"{', '.join(f'{v:.4f}' for v in info['val_abs_err_cx_cy_side'])} (fractions of the square)\n")
    if "held_out_iou" in info:
        r = info["held_out_iou"]
        out.write(f"held-out paintings: IoU median {r['median']:.3f}, mean {r['mean']:.3f}, min {r['min']:.3f} over "
                  f"{r['placements']} placements\n")
    return 0


def add(cmds) -> None:
    y = cmds.top.add_parser("synth", help="render a synthetic paired dataset (or a contact sheet) of procedural "
                                          "characters")
    what = y.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", metavar="DIR", help="dataset folder (sharded .npz + manifest.json; resumes)")
    what.add_argument("--sheet", metavar="FILE.png", help="write a contact sheet instead: characters at rest and in "
                                                         "8 poses")
    y.add_argument("--clip", metavar="SCENE.json", help="with --out: render one character (--seed) following a scene's "
                                                        "keys (any schema, through the character rig) as a folder "
                                                        "of frames (a reference clip with exact ground truth)")
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
    y.add_argument("--styles", metavar="F1,F2", help="style families of the training characters (default cel; "
                                                      f"families: {', '.join(FAMILIES)})")
    y.add_argument("--test-styles", metavar="F1,F2", help="style families of the test characters (default: the "
                                                          "training ones); disjoint ones hold whole styles out")
    y.add_argument("--workers", type=int, help="processes (default: one per core)")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    y.set_defaults(run=cmd_synth)

    c = cmds.top.add_parser("corpus", help="a teacher corpus: pairs whose targets are a teacher generator's renders "
                                           "(e.g. THA3) of paintings and synthetic characters, cut for a student")
    c.add_argument("--out", required=True, metavar="DIR", help="corpus folder (the synth layout; resumes)")
    c.add_argument("--teacher", default="tha3", help="the generator whose renders are the targets (default tha3)")
    c.add_argument("--student", default="atw-au17", help="the model the pairs are cut for: its region, grid and "
                                                         "schema (default atw-au17)")
    c.add_argument("--paintings", nargs="+", metavar="IMG", help="paintings in the teacher's framing (THA: 512², "
                                                                 "head box x 192–320, y 64–192)")
    c.add_argument("--test-paintings", nargs="+", metavar="IMG", help="paintings for the test split only "
                                                                      "(unaugmented)")
    c.add_argument("--augment", type=int, default=4, help="augmented copies per training painting (default 4)")
    c.add_argument("--characters", type=int, default=0, help="synthetic characters (default 0)")
    c.add_argument("--styles", metavar="F1,F2", help="their style families (training)")
    c.add_argument("--test-styles", metavar="F1,F2", help="the test characters' style families")
    c.add_argument("--poses", choices=("all", "expression", "rotation"), default="expression",
                   help="pose set (as keyface synth; default expression)")
    c.add_argument("--poses-per-image", type=int, default=16, help="intents per input image (default 16)")
    c.add_argument("--balanced", type=float, default=0.0, metavar="SHARE",
                   help="draw only moving intents, SHARE of them with a closed eye, a wink, an open mouth or a smile "
                        "set on top (default 0: the engine's sampler, mostly the rest pose through pose5)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(run=cmd_corpus)

    a = cmds.top.add_parser("adapt", help="adapt a fast model to one character: fine-tune a copy on a teacher's "
                                          "renders of it (use the result as MODEL:FOLDER)")
    a.add_argument("--model", required=True,
                   help="the model to adapt (atw-au17, cptnet-pose5, or a model of their families)")
    a.add_argument("--image", required=True, help="the character (THA framing for the THA3 teacher, or give --box)")
    a.add_argument("--box", metavar="x,y,w,h", help="the face box (default: the teacher's, e.g. THA's for a 512² "
                                                   "image, or detected)")
    a.add_argument("--teacher", default="tha3", help="the generator whose renders it learns (default tha3)")
    a.add_argument("--minutes", type=positive, default=10.0, help="wall-time budget: teacher renders, then "
                                                                  "fine-tuning (default 10)")
    a.add_argument("--out", required=True, metavar="DIR", help="the adapted model folder")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(run=cmd_adapt)

    es = cmds.eval.add_parser("styles", help="per model and action: gain over the unchanged image on characters of "
                                             "held-out style families (exact ground truth), and PSNR against a "
                                             "teacher on paintings; head region, full render path")
    es.add_argument("--models", required=True, help="comma-separated model ids (e.g. atw-au17,cptnet-pose5,"
                                                     "atw-au17:FOLDER)")
    es.add_argument("--styles", metavar="F1,F2", help=f"style families to test on ({', '.join(FAMILIES)})")
    es.add_argument("--characters", type=positive_int, default=8, help="characters per style family (default 8)")
    es.add_argument("--paintings", nargs="+", metavar="IMG", help="THA-framed paintings, compared with --teacher")
    es.add_argument("--teacher", default="tha3", help="the paintings' reference generator (default tha3)")
    es.add_argument("--seed", type=int, default=0)
    es.add_argument("--sheet", metavar="FILE.png", help="with --paintings: a contact sheet of the head regions "
                                                        "(the painting, then per action the teacher and each model)")
    es.add_argument("--json", metavar="FILE", help="also write the tables as JSON")
    es.add_argument("--device", default="cpu")
    es.add_argument("--quiet", action="store_true", help="no progress bars")
    es.set_defaults(run=cmd_eval_styles)

    tv = cmds.train.add_parser("features", help="the VGG19-shaped feature network for perceptual losses, on a "
                                                "synthetic dataset (identity classification + rig regression)")
    tv.add_argument("--data", required=True, help="dataset folder written by keyface synth")
    tv.add_argument("--out", required=True, help="weights file (.safetensors; a .json record is written beside)")
    tv.add_argument("--steps", type=positive_int, default=3000)
    tv.add_argument("--batch", type=positive_int, default=32)
    tv.add_argument("--width", type=positive, default=0.25, help="channel multiplier of VGG19's widths")
    tv.add_argument("--seed", type=int, default=0)
    tv.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tv.add_argument("--quiet", action="store_true", help="no progress bar")
    tv.set_defaults(run=cmd_train_features)
    tf = cmds.train.add_parser("facebox", help="the automatic face box regressor, on synthetic characters")
    tf.add_argument("--out", required=True, help="weights file (.safetensors; a .json with metrics is written beside)")
    tf.add_argument("--samples", type=positive_int, default=4000)
    tf.add_argument("--steps", type=positive_int, default=3000)
    tf.add_argument("--seed", type=int, default=0)
    tf.add_argument("--paintings", nargs="+", metavar="PNG",
                    help="THA-framed paintings (square RGBA, head box at x 192–320, y 64–192 of 512²) placed at random "
                         "for part of the samples")
    tf.add_argument("--held-out", nargs="+", metavar="PNG", help="THA-framed paintings to report the IoU on (not "
                                                                 "trained on)")
    tf.add_argument("--painting-share", type=float, default=0.3, help="share of samples from --paintings")
    tf.set_defaults(run=cmd_train_facebox)
