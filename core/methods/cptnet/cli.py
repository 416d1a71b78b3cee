"""CPTNet's command-line jobs: ``keyface train cptnet`` and ``keyface eval cptnet`` (the ablation table)."""

from __future__ import annotations

from ...cli.common import fraction, positive, positive_int, run_args, run_training, write_json

PROGRESS_KEYS = ("total", "pair", "perc", "changed", "cancelled", "saturation", "content", "d_adv")


def cmd_train_cptnet(args, out) -> int:
    from tqdm import tqdm

    from .losses import LossWeights
    from .networks import CPTNetConfig
    from .trainer import TrainConfig, Trainer

    decay = args.steps // 6 if args.decay_steps is None else args.decay_steps
    cfg = TrainConfig(data=args.data, steps=args.steps, batch=args.batch, mode=args.mode, seed=args.seed, lr=args.lr,
                      lr_schedule="linear_tail", decay_steps=decay, eval_every=args.eval_every,
                      eval_characters=args.eval_characters, features=args.features or "",
                      weights=LossWeights(changed=args.changed_weight, cancelled=args.cancelled_weight,
                                          cancelled_everywhere=args.cancelled_everywhere,
                                          cancelled_outside=args.cancelled_outside,
                                          saturation=args.saturation_weight,
                                          saturation_ceiling=args.saturation_ceiling,
                                          content=args.content_weight),
                      init=args.init or "",
                      expression_share=args.expression_share, wink_share=args.wink_share,
                      mouth_share=args.mouth_share, flip=args.flip, attention_scale=args.attention_scale,
                      face_stage=args.face_stage,
                      model=CPTNetConfig(base=args.base, blocks=args.blocks, k=args.k, variant=args.variant,
                                         coords=args.coords))
    trainer = Trainer(cfg, args.out, device=args.device, resume=args.resume,
                      log=lambda msg: tqdm.write(msg, file=out))
    return run_training(trainer, args, out, PROGRESS_KEYS)


def cmd_eval_cptnet(args, out) -> int:
    from .trainer import ablation

    rows = ablation(args.weights, args.data, args.device, out=out)
    if args.json:
        write_json(args.json, rows)
    return 0


def commands(cmds) -> None:
    tc = cmds.train.add_parser("cptnet", help="CPTNet (seed 000) on a synthetic dataset (keyface synth --framing head "
                                        "--project pose5)")
    run_args(tc, 8, "Adam learning rate (the paper: 1e-4, batch 8)", cmd_train_cptnet)
    tc.add_argument("--mode", choices=("both", "supervised"), default="both",
                    help="both: the paper's adversarial + L1 + perceptual loss; supervised: L1 + perceptual")
    tc.add_argument("--variant", choices=("mask", "grid", "mask+grid", "mask+grid+ms"), default="mask+grid+ms",
                    help="head stage of the ablation (Table 1); default the full model")
    tc.add_argument("--k", type=positive_int, default=4, help="cascade steps of the mask branch (default 4)")
    tc.add_argument("--base", type=positive_int, default=16, help="channel width of the first layer (StarGAN: 64)")
    tc.add_argument("--blocks", type=positive_int, default=6, help="residual blocks (default 6)")
    tc.add_argument("--decay-steps", type=int, default=None,
                    help="linear decay to zero over the last N steps (default: the paper's 1/6 of --steps)")
    tc.add_argument("--features", metavar="WEIGHTS", help="feature network for the perceptual loss (default: shipped)")
    for flag, term in (("--changed-weight", "the L1 over the pixels the pose changes (the shipped model's stage 1: "
                                            "1000)"),
                       ("--cancelled-weight", "the changed-pixel L1 of the bias-cancelled output, G(I, pose) − "
                                              "G(I, rest), as the render path applies it"),
                       ("--saturation-weight", "a penalty holding the face stage's attention logits within "
                                               "±CEILING, where their gradients do not vanish"),
                       ("--content-weight", "an L1 on the face stage's content head over the changed pixels of pairs "
                                            "without head motion")):
        tc.add_argument(flag, type=float, default=0.0, metavar="W", help=f"weight of {term} (our addition; 0 = off)")
    tc.add_argument("--cancelled-everywhere", action="store_true",
                    help="take the cancelled term over every pixel (per changed pixel), so changes the pose does not "
                         "ask for cost as much as missed ones (our addition)")
    tc.add_argument("--cancelled-outside", type=fraction, default=1.0, metavar="W",
                    help="with --cancelled-everywhere: weight of the pixels the pose leaves unchanged (default 1; "
                         "lower weighs small changes such as the mouth's more)")
    tc.add_argument("--saturation-ceiling", type=positive, default=5.0, metavar="CEILING",
                    help="the logit bound of --saturation-weight (default 5: at least 99.3 %% of a pixel kept)")
    tc.add_argument("--attention-scale", type=positive, default=1.0, metavar="S",
                    help="with --init: multiply the face stage's attention logits by S before training, to bring "
                         "saturated ones back where they learn (our addition; default 1)")
    for flag, pairs in (("--expression-share", "pairs that move the eyes or the mouth"),
                        ("--wink-share", "pairs that close one eye more than the other"),
                        ("--mouth-share", "pairs that open the mouth")):
        tc.add_argument(flag, type=float, default=0.0, metavar="F",
                        help=f"fraction of each batch drawn from {pairs} (our addition; 0 = uniform, the paper)")
    tc.add_argument("--coords", action="store_true",
                    help="give the trunk the pixel coordinates (CoordConv; our addition; with --init, weights without "
                         "them are upgraded: the new input weights start at zero)")
    tc.add_argument("--face-stage", action="store_true",
                    help="train the face stage alone on the pairs whose head is at rest (eyes and mouth; our "
                         "addition); then a full run with --init retrains the head stage")
    tc.add_argument("--flip", action="store_true",
                    help="mirror half of the pairs left-right, swapping the eyes and the sign of yaw (our addition)")
    ec = cmds.eval.add_parser("cptnet", help="the ablation table (seed 000 Table 1: L1, RMSE, SSIM) on the test split")
    ec.add_argument("weights", nargs="+", help="one generator per variant (runs of equal budget)")
    ec.add_argument("--data", required=True, help="dataset (its test split: held-out characters)")
    ec.add_argument("--device", default="cpu")
    ec.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ec.set_defaults(run=cmd_eval_cptnet)
