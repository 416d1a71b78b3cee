"""ATW's command-line jobs: ``keyface train atw`` and ``keyface eval atw``."""

from __future__ import annotations

from ...cli.common import positive_int, run_args, run_training, set_arg, write_json

PROGRESS_KEYS = ("total", "img", "flow", "rec", "d_adv")


def cmd_train_atw(args, out) -> int:
    from tqdm import tqdm

    from .losses import LossWeights
    from .networks import ATWConfig
    from .trainer import TrainConfig, Trainer

    cfg = TrainConfig(data=args.data, steps=args.steps, batch=args.batch, mode=args.mode, seed=args.seed,
                      lr=args.lr, lr_schedule=args.lr_schedule, eval_every=args.eval_every,
                      eval_characters=args.eval_characters, init=args.init or "", model=ATWConfig(base=args.base),
                      weights=LossWeights(changed_per_sample=args.changed_per_sample,
                                          img_cancelled=args.cancelled_weight), select=args.select,
                      focus=dict(args.focus or ()))
    trainer = Trainer(cfg, args.out, device=args.device, resume=args.resume,
                      log=lambda msg: tqdm.write(msg, file=out))
    return run_training(trainer, args, out, PROGRESS_KEYS)


def cmd_eval_atw(args, out) -> int:
    from ...synth.dataset import load_manifest
    from .evaluate import evaluate_render
    from .runtime import ATWRuntime
    from .trainer import format_eval

    seeds = load_manifest(args.data)["splits"]["test"][:args.characters]
    rows = evaluate_render(ATWRuntime(args.weights, args.device), seeds, args.size)
    out.write(f"ATW through the render path: {len(seeds)} held-out characters of {args.data} at {args.size}², "
              "face box\n" + format_eval(rows) + "\n")
    if args.json:
        write_json(args.json, rows)
    return 0


def commands(cmds) -> None:
    ta = cmds.train.add_parser("atw", help="ATW (seed 004) on a synthetic dataset (keyface synth --framing face "
                                     "--poses expression --project au17)")
    run_args(ta, 16, "Adam learning rate (the paper: 1e-4)", cmd_train_atw)
    ta.add_argument("--mode", choices=("supervised", "gan", "both"), default="supervised",
                    help="supervised (paired corpus), gan (the paper's five losses), or both")
    ta.add_argument("--base", type=positive_int, default=16, help="channel width of the first layer")
    ta.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                    help="constant (the paper) or cosine decay to 5%% of --lr at --steps")
    ta.add_argument("--changed-per-sample", action="store_true",
                    help="average the changed-pixel losses within each sample first (small expressions such as a "
                         "smile weigh as much as a blink)")
    ta.add_argument("--cancelled-weight", type=float, default=0.0, metavar="W",
                    help="weight of the bias-cancelled changed-pixel L1 (our addition; 0 = off)")
    ta.add_argument("--select", choices=("mean", "worst"), default="mean",
                    help="best checkpoint by the mean PSNR gain over blink, mouth open and smile, or by the worst one")
    ta.add_argument("--focus", type=set_arg, action="append", metavar="AU=F",
                    help="draw fraction F of each batch from the pairs with that action unit at intensity ≥ 2.5, e.g. "
                         "AU12=0.25 (repeatable; our addition; default uniform batches)")
    ea = cmds.eval.add_parser("atw", help="through the whole render path (face-box PSNR / SSIM vs the identity "
                                          "baseline)")
    ea.add_argument("weights", help="generator weights (.safetensors with its .json)")
    ea.add_argument("--data", required=True, help="the dataset it was trained on (its test characters are used)")
    ea.add_argument("--characters", type=positive_int, default=12, help="held-out characters (default 12)")
    ea.add_argument("--size", type=positive_int, default=512, help="character image size (default 512)")
    ea.add_argument("--device", default="cpu")
    ea.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ea.set_defaults(run=cmd_eval_atw)
