"""Style mapping on keyface's held-out synthetic characters (``keyface eval stylemap``).

Every row is measured on the same pairs: the test split of the dataset (characters no run trained on; the engine's
rest image → its posed image, head crops), MAE / MSE / PSNR / SSIM of the whole crop as RGB over grey.

* **identity**: the source itself (output = input).
* **reconstruction** (the paper's measure): the posed image's extracted pose and expression with the rest image's
  canonical keypoints drive the rest image; the network's output.
* **through the render path**: the model (and any ``compare`` models) on the rest image with its face box, the pose's
  character-rig values converted to each model's schema (:func:`keyface.core.metrics.render_rows`), bias
  cancellation and ResWarp included — what a keyframing user gets.
* **pose–expression network**: mean absolute error of yaw, pitch, roll in degrees on the posed test images (the truth:
  the engine's head angles, body roll added to the roll); keypoint error of the final keypoints x against the
  engine's landmarks, and **equivariance**: |A·x(T(I)) + b − x(I)| over random affine transforms T (rotation ±10°,
  scale 0.9–1.1, shift ±8 %), both in % of the face box side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...metrics import image_metrics, mean_rows, render_rows
from ...models import ModelInfo, registered
from ...pixels import to_net
from ...training import load_split
from . import networks as N
from .trainer import COLUMNS, angles_of, keypoint_targets, random_affines, reconstruct

EVAL_COLUMNS = COLUMNS + ("rest_face_box", "char_seed")


@torch.no_grad()
def keypoint_accuracy(model: N.StyleMap, data: dict, device, seed: int = 0, batch: int = 16) -> dict:
    """Head pose (degrees), keypoint and equivariance errors (% of the face box side) on the posed images."""
    model.eval()
    size = model.cfg.size
    truth = keypoint_targets(data["values"], data["vertices_rest"], data["vertices_posed"], size)
    rng = np.random.default_rng(seed)
    ang, kp, eq = [], [], []
    for i in range(0, len(data["posed"]), batch):
        img = to_net(data["posed"][i:i + batch]).to(device)
        det = model.detect(img)
        a = torch.stack([det["angles"][k] for k in ("yaw", "pitch", "roll")], -1).cpu().numpy()
        ang.append(np.abs(a - angles_of(data["values"][i:i + batch])))
        kp.append(np.linalg.norm(det["x"].cpu().numpy() - truth["x"][i:i + batch], axis=-1).mean(1))
        m = torch.from_numpy(random_affines(rng, len(img))).to(device)
        moved = model.detect(F.grid_sample(img, F.affine_grid(m, list(img.shape), align_corners=False),
                                           align_corners=False))["x"][..., :2]
        back = moved @ m[:, :, :2].transpose(1, 2) + m[:, :, 2][:, None]
        eq.append((back - det["x"][..., :2]).norm(dim=-1).mean(1).cpu().numpy())
    ang = np.concatenate(ang)
    return {"yaw_deg": float(ang[:, 0].mean()), "pitch_deg": float(ang[:, 1].mean()),
            "roll_deg": float(ang[:, 2].mean()), "angle_deg": float(ang.mean()),
            "keypoint_pct": float(100 * np.concatenate(kp).mean()),
            "equivariance_pct": float(100 * np.concatenate(eq).mean())}


def evaluate(weights, data_dir, compare=(), pairs=None, device="cpu", out=None) -> list[dict]:
    from .runtime import StyleMapRuntime

    data = load_split(data_dir, "test", EVAL_COLUMNS)
    if pairs:
        data = {k: v[:pairs] for k, v in data.items()}
    dev = torch.device(device)
    model = N.load_model(weights, dev)
    meta = json.loads(Path(weights).with_suffix(".json").read_text(encoding="utf-8"))
    base = mean_rows([image_metrics(r / 255.0, t / 255.0) for r, t in zip(data["rest"], data["posed"], strict=True)])
    rows = [{"row": "identity (output = input)", **base}]
    rec = reconstruct(model, data["rest"], data["posed"], dev)
    rows.append({"row": "stylemap: reconstruction (driver's keypoints)", "steps": meta.get("steps"),
                 **mean_rows([image_metrics(o, t / 255.0) for o, t in zip(rec["out"], data["posed"], strict=True)])})
    info = ModelInfo("stylemap-eval", "stylemap", "kp", "the weights under evaluation", Path(weights),
                     lambda i, device="cpu": StyleMapRuntime(weights, device))
    with registered(info):
        rows.append({"row": "stylemap: kp keys (render path)", "steps": meta.get("steps"),
                     **render_rows(info.id, data, device)})
    for m in compare:
        rows.append({"row": f"{m} (render path)", **render_rows(m, data, device)})
    acc = keypoint_accuracy(model, data, dev)
    rows.append({"row": "pose–expression network", **acc})
    if out is not None:
        chars = len(np.unique(data["char_seed"]))
        out.write(f"style mapping on {len(data['rest'])} held-out pairs ({chars} test characters of {data_dir}), head "
                  f"crops {data['rest'].shape[1]}², RGB over grey\n")
        out.write(f"{'row':<48} {'steps':>6} {'PSNR ↑':>8} {'SSIM ↑':>8} {'MAE ↓':>8} {'MSE ↓':>9}\n")
        for r in rows[:-1]:
            out.write(f"{r['row']:<48} {r.get('steps') or '':>6} {r['psnr']:8.2f} {r['ssim']:8.4f} {r['mae']:8.4f} "
                      f"{r['mse']:9.5f}\n")
        out.write("pose–expression network on the posed test images: head pose error {angle_deg:.2f}° (yaw "
                  "{yaw_deg:.2f}°, pitch {pitch_deg:.2f}°, roll {roll_deg:.2f}°), keypoint error {keypoint_pct:.2f} % "
                  "of the face box, equivariance error {equivariance_pct:.2f} % of the face box\n".format(**acc))
    return rows
