"""F³A-GAN's command-line jobs: ``keyface train f3a``, ``keyface eval f3a`` (Table II) and ``keyface fit3dmm``."""

from __future__ import annotations

import json

import numpy as np

from ...cli.common import positive_int, run_args, run_training, write_json
from ...errors import KeyfaceError

PROGRESS_KEYS = ("total", "wp", "perc", "adv", "lm", "shp", "tr", "exp2")


def cmd_train_f3a(args, out) -> int:
    from tqdm import tqdm

    from .networks import F3AConfig, RegressorConfig
    from .trainer import LossWeights, RegressorTrainConfig, RegressorTrainer, TrainConfig, Trainer

    common = dict(data=args.data, steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr,
                  lr_schedule=args.lr_schedule, eval_every=args.eval_every, eval_characters=args.eval_characters,
                  init=args.init or "")
    log = lambda msg: tqdm.write(msg, file=out)  # noqa: E731
    if args.stage == "regressor":
        mode = args.mode or "warm"
        if mode not in ("warm", "sub"):
            raise KeyfaceError("the regressor's --mode is warm (Eq. 8) or sub (Eq. 9)")
        cfg = RegressorTrainConfig(**common, mode=mode, model=RegressorConfig(size=args.size, base=args.base),
                                   augment=not args.no_augment,
                                   weights=LossWeights(shp=args.shape_weight, lm=args.landmark_weight,
                                                       exp_l2=args.exp_l2_weight))
        trainer = RegressorTrainer(cfg, args.out, device=args.device, resume=args.resume, log=log)
    else:
        mode = args.mode or "supervised"
        if mode not in ("supervised", "gan"):
            raise KeyfaceError("the generator's --mode is supervised or gan")
        cfg = TrainConfig(**common, mode=mode, identity_share=args.identity_share, fade_fraction=args.fade_fraction,
                          weights=LossWeights(), model=F3AConfig(size=args.size, base=args.base,
                                                                 condition=args.condition, streams=args.streams))
        trainer = Trainer(cfg, args.out, device=args.device, resume=args.resume, log=log)
    return run_training(trainer, args, out, PROGRESS_KEYS)


def cmd_eval_f3a(args, out) -> int:
    from .evaluate import table2

    rows = table2(args.weights, args.data, regressor=args.regressor,
                  compare=[m for m in (args.compare or "").split(",") if m], pairs=args.pairs,
                  device=args.device, out=out, cross=args.cross, cross_pairs=args.cross_pairs)
    if args.json:
        write_json(args.json, rows)
    return 0


def cmd_fit3dmm(args, out) -> int:
    from ...box import Box
    from ...imageio import read_image, write_image
    from ...io import atomic_write_text
    from ...models import get_model
    from ...pipeline import FrameJob

    source = read_image(args.image)
    job = FrameJob.prepare(source, args.model, Box.parse(args.box) if args.box else None, args.device)
    runtime = job.runtime
    if not runtime.has_fit:
        raise KeyfaceError(f"model {args.model} does not fit a 3DMM (try f3a-3dmm)")
    fit = fit_record(job, args.image, args.model)
    schema = get_model(args.model).schema
    out.write(f"3DMM fit of {args.image} ({schema.name}; face box {list(job.face_box)}, region {list(job.box)}):\n")
    for name, v in fit["params"].items():
        out.write(f"  {name:<8} {v:+.4f}\n")
    if args.out:
        atomic_write_text(args.out, json.dumps(fit, indent=1))
        out.write(f"wrote {args.out}\n")
    if args.overlay:
        write_image(args.overlay, landmark_overlay(source, np.array(fit["landmarks"])))
        out.write(f"wrote {args.overlay}\n")
    return 0


def fit_record(job, image: str, model: str) -> dict:
    """The fit file: the parameters (absolute, schema order), the face box, the region and the fitted mesh's landmarks
    in document pixels (what an artist checks)."""
    from ...pixels import with_alpha
    from ...rig import get_schema

    low = with_alpha(job.lifter.low_input())
    params = job.runtime.fit(low)
    doc = job.grid_to_document(job.runtime.fit_landmarks(low))
    b = job.box
    names = get_schema(job.runtime.schema).names
    return {"keyface_fit": 1, "schema": job.runtime.schema, "model": model, "image": str(image),
            "face_box": list(job.face_box), "region": list(b),
            "params": {n: float(v) for n, v in zip(names, params, strict=True)},  # exact: a reread fit is the fit
            "landmarks": np.round(doc, 2).tolist()}


def landmark_overlay(image: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The image (8-bit RGBA) with the landmarks drawn as small crosses, the mesh's triangles as thin lines."""
    import cv2

    from ...pixels import quantise, to_unit, with_alpha
    from . import geometry as geo

    img = quantise(with_alpha(to_unit(image)))
    img[..., 3] = 255
    rgb = np.ascontiguousarray(img[..., :3])
    r = max(2, int(round(min(image.shape[:2]) / 200)))
    for a, b, c in geo.triangles():
        poly = np.round(pts[[a, b, c]] * 16).astype(np.int32)
        cv2.polylines(rgb, [poly], True, (0, 200, 255), 1, cv2.LINE_AA, shift=4)
    for x, y in pts:
        p = (int(round(x)), int(round(y)))
        cv2.drawMarker(rgb, p, (255, 40, 40), cv2.MARKER_CROSS, 2 * r, max(1, r // 2))
    img[..., :3] = rgb
    return img


def commands(cmds) -> None:
    from .networks import CONDITIONS

    tr = cmds.train.add_parser("f3a", help="F³A-GAN (seed 002): the 3DMM regressor or the two-stream generator, on a "
                                           "dataset from keyface synth --framing head")
    run_args(tr, 8, "Adam learning rate (default 1e-4)", cmd_train_f3a)
    tr.add_argument("--stage", choices=("generator", "regressor"), default="generator")
    tr.add_argument("--mode", help="generator: supervised (default) or gan; regressor: warm (Eq. 8, default) or sub "
                                   "(Eq. 9)")
    tr.add_argument("--condition", choices=tuple(CONDITIONS), default="flow",
                    help="the generator's condition: facial flow (the paper), aus (17 action units + Euler angles), "
                         "landmarks (a heatmap)")
    tr.add_argument("--streams", type=int, choices=(1, 2), default=2, help="2: the paper; 1: the one-stream T_os")
    tr.add_argument("--base", type=positive_int, default=12, help="width of the first level")
    tr.add_argument("--size", type=positive_int, default=128, help="crop size (the dataset's)")
    tr.add_argument("--identity-share", type=float, default=0.125,
                    help="share of each batch that reconstructs the source with a zero condition")
    tr.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    tr.add_argument("--fade-fraction", type=float, default=0.4,
                    help="generator: share of the steps over which the fade-in α rises from 0 to 1 (0: α = 1 "
                         "throughout, for a run continuing a faded-in generator with --init)")
    tr.add_argument("--no-augment", action="store_true", help="regressor: no zoom, shift or colour augmentation")
    tr.add_argument("--shape-weight", type=float, default=1.0, help="regressor: weight of L_shp in Eq. 8 (default 1)")
    tr.add_argument("--landmark-weight", type=float, default=1.0, help="regressor: λ1, the weight of L_lm (default 1)")
    tr.add_argument("--exp-l2-weight", type=float, default=10.0,
                    help="regressor: weight of the squared α_exp error (our addition, default 10; 0 = Eq. 8 alone)")

    ev = cmds.eval.add_parser("f3a", help="Table II on held-out characters: conditions and streams (exact meshes), "
                                          "the identity baseline, and models through the render path")
    ev.add_argument("weights", nargs="*", help="generator weights of the variants (.safetensors with its .json)")
    ev.add_argument("--data", required=True, help="the dataset (its test split: characters no run trained on)")
    ev.add_argument("--regressor", metavar="WEIGHTS", help="also report the regressor's accuracy on the test split")
    ev.add_argument("--compare", metavar="A,B", help="models run through the render path on the same pairs (e.g. "
                                                     "f3a-3dmm,cptnet-pose5,atw-au17)")
    ev.add_argument("--pairs", type=positive_int, help="use the first N test pairs (default: all)")
    ev.add_argument("--cross", metavar="MODEL", help="also cross-identity reenactment with this model: a test "
                                                      "character's expression and pose (its fit) on the next one, "
                                                      "against the engine's render")
    ev.add_argument("--cross-pairs", type=positive_int, default=64, help="driver images for --cross (default 64)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ev.set_defaults(run=cmd_eval_f3a)

    fi = cmds.top.add_parser("fit3dmm", help="fit the 3DMM to a face (print and save the parameters and landmarks)")
    fi.add_argument("image", metavar="IMAGE")
    fi.add_argument("--model", default="f3a-3dmm", help="a model that fits a 3DMM (default f3a-3dmm)")
    fi.add_argument("--box", metavar="x,y,w,h", help="the face box (default: detected, or THA's for a 512² image)")
    fi.add_argument("--out", metavar="FIT.json", help="save the fit (parameters, face box, landmarks)")
    fi.add_argument("--overlay", metavar="OUT.png", help="save the image with the fitted landmarks drawn on it")
    fi.add_argument("--device", default="cpu")
    fi.set_defaults(run=cmd_fit3dmm)

