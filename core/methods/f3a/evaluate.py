"""F³A-GAN's Table II on keyface's held-out synthetic characters (``keyface eval f3a``).

Every row is measured on the same pairs: the test split of the dataset (characters no run trained on; the engine's
rest image → its posed image, head crops), MAE / MSE / SSIM of the whole crop as RGB over grey.

* **identity**: the source itself (output = input).
* **variants** (the conditions study and one- vs two-stream): each generator with its condition made from the
  engine's *exact* source and target meshes, as in training — what the representation allows, free of fitting error;
  the paper's measure (the generator's output), and the bias-cancelled output keyface applies (source + G(target) −
  G(rest)).
* **through the render path** (``compare``): registered models on the rest image with the face box, their schema's
  values converted from the pose's character-rig values (what a converter drops is dropped: au17 has no head
  rotation, pose5 no brows or gaze, the 3DMM keys no body motion), bias cancellation and ResWarp included.
  ``f3a-3dmm`` runs with its regressor's fit of the source, as a user gets it.
* **cross-identity** (``cross``): another character's expression and head pose through its fit
  (:func:`cross_identity`), against the engine's render of the source character with them.
* **regressor**: landmark error (% of the face box side) and parameter errors on the posed test images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...metrics import image_metrics, mean_rows, render_rows
from ...pipeline import FrameJob
from ...pixels import quantise, with_alpha
from ...rig import character_schema
from ...training import load_split
from .trainer import evaluate_set, fit_batch, regressor_accuracy, true_params

COLUMNS = ("rest", "posed", "param_3dmm", "param_au17", "values", "rest_face_box", "char_seed")


def cross_identity(model: str, data: dict, pairs: int, device: str = "cpu") -> dict:
    """Cross-identity reenactment (§IV, ``keyface pose --from-fit``) with exact ground truth: the driver is test pair
    i's posed image (character B), fitted by the model's regressor; the source is the next test character's rest
    image (A); the truth is the engine's render of A with B's expression and head pose (B's rig values). Returns the
    mean metrics of the frames and of the unchanged source."""
    from ...models import get_model
    from ...synth.character import sample_character
    from ...synth.render import FRAMINGS
    from ...synth.sample import PairRenderer

    runtime = get_model(model).load(device)
    seeds = list(dict.fromkeys(int(s) for s in data["char_seed"]))
    rows, base = [], []
    size = data["rest"].shape[1]
    names = character_schema().names
    for i in range(min(pairs, len(data["rest"]))):
        b = int(data["char_seed"][i])
        a = seeds[(seeds.index(b) + 1) % len(seeds)]
        ia = int(np.flatnonzero(data["char_seed"] == a)[0])
        driver_job = FrameJob.prepare(data["posed"][i], runtime, tuple(int(v) for v in data["rest_face_box"][i]),
                                      device)
        driver = runtime.fit(with_alpha(driver_job.lifter.low_input()))
        job = FrameJob.prepare(data["rest"][ia], runtime, tuple(int(v) for v in data["rest_face_box"][ia]), device)
        values = runtime.values_from_fit(driver, with_alpha(job.lifter.low_input()))
        frame = job.frames(values[None])[0]
        pr = PairRenderer(sample_character(a), (size, size), FRAMINGS["head"])
        truth = pr.renderer.render(dict(zip(names, (float(v) for v in data["values"][i]), strict=True))).image
        truth = quantise(truth) / 255.0
        rows.append(image_metrics(frame / 255.0, truth))
        base.append(image_metrics(data["rest"][ia] / 255.0, truth))
    return {"ours": mean_rows(rows), "identity": mean_rows(base), "pairs": len(rows)}


def table2(weights, data_dir, regressor=None, compare=(), pairs=None, device="cpu", out=None, cross=None,
           cross_pairs: int = 64) -> list[dict]:
    import torch

    from .networks import load_generator, load_regressor

    data = load_split(data_dir, "test", COLUMNS)
    if pairs:
        data = {k: v[:pairs] for k, v in data.items()}
    n = len(data["rest"])
    dev = torch.device(device)
    base = mean_rows([image_metrics(r / 255.0, t / 255.0) for r, t in zip(data["rest"], data["posed"], strict=True)])
    rows = [{"row": "identity (output = input)", **base}]
    for path in weights:
        gen = load_generator(path, dev)
        meta = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
        r = evaluate_set(gen, data, dev, cancelled=True)
        cfg = gen.cfg
        name = f"{cfg.condition}, {cfg.streams}-stream"
        rows.append({"row": f"{name} (exact meshes)", "steps": meta.get("steps"), "weights": str(path), **r["ours"]})
        rows.append({"row": f"{name}, bias-cancelled", "steps": meta.get("steps"), "weights": str(path),
                     **r["cancelled"]})
    for model in compare:
        rows.append({"row": f"{model} (render path)", **render_rows(model, data, device)})
    if cross:
        r = cross_identity(cross, data, cross_pairs, device)
        rows.append({"row": f"{cross}: cross-identity, source unchanged", **r["identity"]})
        rows.append({"row": f"{cross}: cross-identity (--from-fit)", **r["ours"]})
    reg = None
    if regressor:
        net = load_regressor(regressor, dev)
        reg = regressor_accuracy(fit_batch(net, data["posed"], dev), true_params(data["param_3dmm"], data["values"]),
                                 net.cfg.size)
        rows.append({"row": "regressor", **reg})
    if out is not None:
        chars = len(np.unique(data["char_seed"]))
        out.write(f"F³A Table II on {n} held-out pairs ({chars} test characters of {data_dir}), head crops "
                  f"{data['rest'].shape[1]}², RGB over grey\n")
        out.write(f"{'row':<44} {'steps':>6} {'MAE ↓':>8} {'MSE ↓':>9} {'SSIM ↑':>8}\n")
        for r in rows:
            if r["row"] == "regressor":
                continue
            out.write(f"{r['row']:<44} {r.get('steps') or '':>6} {r['mae']:8.4f} {r['mse']:9.5f} {r['ssim']:8.4f}\n")
        if reg:
            out.write("regressor on the posed test images: landmark error {landmark_pct:.2f} % of the face box "
                      "(95th percentile {landmark_pct_p95:.2f} %), rotation {angle_deg:.2f}°, α_exp {exp_abs:.3f} "
                      "(correlation with the truth {exp_corr:.2f}), "
                      "α_id {id_abs:.3f}, scale {scale_abs:.4f} (mean absolute errors)\n".format(**reg))
    return rows
