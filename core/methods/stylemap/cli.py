"""Style mapping's command-line jobs: ``keyface train stylemap`` and ``keyface eval stylemap``."""

from __future__ import annotations

from ...cli.common import positive_int, run_args, run_training, write_json
from ...errors import KeyfaceError

PROGRESS_KEYS = ("total", "pixel", "flow", "perc", "keypoints", "angles", "adv")


def cmd_train_stylemap(args, out) -> int:
    from tqdm import tqdm

    from .networks import StyleMapConfig
    from .trainer import LossWeights, TrainConfig, Trainer

    mode = args.mode
    if mode not in ("supervised", "gan"):
        raise KeyfaceError("--mode is supervised or gan")
    cfg = TrainConfig(data=args.data, steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr,
                      lr_schedule=args.lr_schedule, eval_every=args.eval_every, eval_characters=args.eval_characters,
                      init=args.init or "", mode=mode, identity_share=args.identity_share,
                      reverse_share=args.reverse_share, stage=args.stage,
                      weights=LossWeights(angle_l1=args.angle_l1),
                      model=StyleMapConfig(size=args.size, base=args.base, hourglass=args.hourglass))
    log = lambda msg: tqdm.write(msg, file=out)  # noqa: E731
    trainer = Trainer(cfg, args.out, device=args.device, resume=args.resume, log=log)
    return run_training(trainer, args, out, PROGRESS_KEYS)


def cmd_eval_stylemap(args, out) -> int:
    from .evaluate import evaluate

    rows = evaluate(args.weights, args.data, compare=[m for m in (args.compare or "").split(",") if m],
                    pairs=args.pairs, device=args.device, out=out)
    if args.json:
        write_json(args.json, rows)
    return 0


def commands(cmds) -> None:
    tr = cmds.train.add_parser("stylemap", help="style mapping (seed 003): keypoint extractor, pose–expression network "
                                                "and warping generator, on a dataset from keyface synth --framing head")
    run_args(tr, 8, "Adam learning rate (default 1e-4)", cmd_train_stylemap)
    tr.add_argument("--mode", default="supervised", help="supervised (default) or gan (adds LS-GAN)")
    tr.add_argument("--stage", choices=("all", "detector"), default="all",
                    help="all: every network (default); detector: only the keypoint extractor and the pose–expression "
                         "network (a run continuing a model with --init, at a larger --batch)")
    tr.add_argument("--size", type=positive_int, default=128, help="crop size (the dataset's)")
    tr.add_argument("--base", type=positive_int, default=16, help="width of the first 2D level")
    tr.add_argument("--hourglass", type=positive_int, default=16, help="width of the warping hourglass's first level")
    tr.add_argument("--identity-share", type=float, default=0.125,
                    help="share of each batch that reconstructs the source from its own keypoints")
    tr.add_argument("--reverse-share", type=float, default=0.3,
                    help="share of each batch driven the other way: the posed image as the source, the rest as target")
    tr.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    tr.add_argument("--angle-l1", type=float, default=1.0,
                    help="weight of the expected head angles' L1 next to the bins' cross-entropy (default 1)")

    ev = cmds.eval.add_parser("stylemap", help="held-out characters: reconstruction, kp keys through the render path, "
                                               "the identity baseline, head pose, keypoint and equivariance errors")
    ev.add_argument("weights", help="the model's weights (.safetensors with its .json)")
    ev.add_argument("--data", required=True, help="the dataset (its test split: characters no run trained on)")
    ev.add_argument("--compare", metavar="A,B", help="models run through the render path on the same pairs (e.g. "
                                                     "cptnet-pose5,atw-au17,f3a-3dmm)")
    ev.add_argument("--pairs", type=positive_int, help="use the first N test pairs (default: all)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ev.set_defaults(run=cmd_eval_stylemap)
