"""Data and helper networks: synthetic corpora and contact sheets, the perceptual feature network, the face box
detector."""

from __future__ import annotations

from pathlib import Path

from ..errors import KeyfaceError
from .common import positive, positive_int, progress_bar


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
                      project=args.project).check()
    bar, progress = progress_bar("synth", "char", args.quiet, cfg.characters)
    manifest = write_dataset(args.out, cfg, workers=args.workers, progress=progress)
    bar.close()
    n = {split: sum(s["samples"] for s in manifest["shards"].values() if s["split"] == split)
         for split in manifest["splits"]}
    out.write(f"wrote {args.out}: {n.get('train', 0)} train and {n.get('test', 0)} test pairs at "
              f"{cfg.size}² ({len(manifest['splits']['train'])} + {len(manifest['splits']['test'])} characters)\n")
    return 0


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
    y.add_argument("--workers", type=int, help="processes (default: one per core)")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    y.set_defaults(run=cmd_synth)

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
