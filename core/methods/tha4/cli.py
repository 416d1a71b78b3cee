"""THA4's command-line jobs: ``keyface train tha4-teacher``, ``keyface distill``, ``keyface eval tha4-teacher`` and
``keyface bench tha4``."""

from __future__ import annotations

from pathlib import Path

from ...cli.common import positive_int, progress_bar, run_args, run_training, stop_on_sigterm, write_json

PROGRESS_KEYS = ("total", "l1", "percept", "l1_blended")


def cmd_train_tha4_teacher(args, out) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from .teacher import EDITOR, HALF_ROTATOR, FaceTeacherConfig
    from .train_teacher import TeacherConfig, TeacherTrainer

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
    return run_training(trainer, args, out, PROGRESS_KEYS)


def cmd_distill(args, out) -> int:
    import shutil

    from tqdm import tqdm

    from ...errors import KeyfaceError
    from ...models import get_teacher
    from .distill import DistillConfig, Distiller, distillation_inputs

    teacher = get_teacher(args.teacher, args.device)
    if args.size:
        if not getattr(teacher, "full_input", False):
            raise KeyfaceError(f"--size: the teacher {args.teacher} works at its own size "
                               f"({getattr(teacher, 'size', 512)}²)")
        teacher.size = args.size
    size = getattr(teacher, "size", 512)  # a reduced teacher works at its own size (e.g. 256²)
    image, mask = distillation_inputs(args.image, args.face_mask, size)
    full = distillation_inputs(args.image, None, 512)[0] if getattr(teacher, "full_input", False) else None
    cfg = DistillConfig(face_examples=args.face_examples, body_examples=args.body_examples, batch=args.batch,
                        size=size, seed=args.seed, eval_poses=args.eval_poses)
    d = Distiller(teacher, image, mask, args.out, cfg, device=str(teacher.device),
                  log=lambda m: tqdm.write(m, file=out), teacher_image=full)
    shutil.copyfile(args.image, Path(args.out) / "character.png")
    bar, move = progress_bar("distill", "ex", args.quiet, cfg.face_examples + cfg.body_examples,
                             d.face_seen + d.body_seen)
    terminated = stop_on_sigterm()

    def progress(seen, logs):
        move(seen, logs={k: f"{v:.3g}" for k, v in logs.items() if k in ("face_loss", "body_loss")})

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


def cmd_eval_tha4_teacher(args, out) -> int:
    from ...weights import pick_device
    from . import TEACHER
    from .train_teacher import TeacherPipeline, evaluate_teacher

    teacher = TeacherPipeline(args.folder or TEACHER, pick_device(args.device))
    rows = {}
    for data in args.data:
        r = rows[data] = evaluate_teacher(teacher, data)
        out.write(f"{data}: {r['changed_pairs']} of {r['pairs']} held-out pairs changed by their pose, at "
                  f"{teacher.size}²: PSNR {r['psnr']:.2f} dB (identity "
                  f"{r['identity']:.2f}), face box {r['face_psnr']:.2f} dB (identity {r['face_identity']:.2f}; the "
                  f"face stage alone {r['face_stage_psnr']:.2f})\n")
    if args.json:
        write_json(args.json, rows)
    return 0


def cmd_bench_tha4(args, out) -> int:
    from .bench import bench_tha4

    bench_tha4(args.character, repeat=args.repeat, device=args.device, out=out)
    return 0


def commands(cmds) -> None:
    th = cmds.train.add_parser("tha4-teacher", help="a stage of keyface's THA4 teacher (seed 001 App. A–B) on a "
                                                    "synthetic dataset (keyface synth --framing full --project tha45)")
    run_args(th, 16, "Adam learning rate after the warm-up (the paper: 1e-4)", cmd_train_tha4_teacher)
    th.add_argument("--warmup-examples", type=positive_int, default=5000,
                    help="examples of the linear learning-rate warm-up (the paper: 5,000)")
    th.add_argument("--stage", choices=("face", "rotator", "editor"), required=True,
                    help="face: the face morpher (data --poses expression); rotator: the half-resolution rotator; "
                         "editor: the editor (data --poses rotation)")
    th.add_argument("--rotator", metavar="WEIGHTS", help="editor: the trained rotator's generator.safetensors")
    th.add_argument("--base", type=positive_int, help="base channels (Table 8: rotator 64, editor 32; face 32)")
    th.add_argument("--mults", metavar="A,B,…", help="U-Net channel multipliers (Table 8 by default)")
    th.add_argument("--features", metavar="WEIGHTS", help="feature network for the perceptual loss (default: shipped)")
    di = cmds.top.add_parser("distill", help="distill a teacher into a THA4 character model for one image (seed 001 "
                                             "§5)")
    di.add_argument("--teacher", required=True, help="tha3 (the official THA3 poser), tha3:FOLDER, tha4-teacher "
                                                     "(keyface's shipped 256² teacher), tha4-teacher:FOLDER (another) "
                                                     "or tha4-student:FOLDER (a THA4 character model)")
    di.add_argument("--image", required=True, help="the character: 512×512 RGBA PNG in the THA framing")
    di.add_argument("--face-mask", help="512×512 mask of the movable facial parts (white), for the λ_fm = 20 term")
    di.add_argument("--out", required=True, help="character model folder (resumes when it holds a checkpoint)")
    di.add_argument("--face-examples", type=positive_int, default=1_000_000, help="the paper: 1,000,000")
    di.add_argument("--body-examples", type=positive_int, default=1_500_000, help="the paper: 1,500,000")
    di.add_argument("--batch", type=positive_int, default=8)
    di.add_argument("--size", type=int, choices=(128, 256, 512), help="tha3 teacher: learn at this size (its outputs "
                    "area-scaled from 512²; 256 costs a quarter of the body student's time); the character model "
                    "still renders at 512²")
    di.add_argument("--eval-poses", type=positive_int, default=1000, help="poses for the final student-vs-teacher "
                                                                           "PSNR (the paper: 1,000)")
    di.add_argument("--seed", type=int, default=0)
    di.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    di.add_argument("--quiet", action="store_true", help="no progress bar")
    di.set_defaults(run=cmd_distill)
    et = cmds.eval.add_parser("tha4-teacher", help="the assembled THA4 teacher on held-out pairs (PSNR, whole image "
                                                   "and face box, vs the identity baseline)")
    et.add_argument("folder", nargs="?", help="teacher folder (face, rotator and editor .safetensors; default: the "
                                              "shipped teacher)")
    et.add_argument("--data", required=True, nargs="+", help="datasets at the teacher's size (their test splits)")
    et.add_argument("--device", default="cpu")
    et.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    et.set_defaults(run=cmd_eval_tha4_teacher)
    bt = cmds.bench.add_parser("tha4", help="THA4 student frame time: keyface's evaluator vs layer by layer, same "
                                            "weights")
    bt.add_argument("--character", metavar="DIR", required=True,
                    help="a character model folder (e.g. an official one: character_models/lambda_00)")
    bt.add_argument("--repeat", type=positive_int, default=10, help="timed frames (median), after 2 warm-up")
    bt.add_argument("--device", default="cpu", help="cpu or cuda")
    bt.set_defaults(run=cmd_bench_tha4)
