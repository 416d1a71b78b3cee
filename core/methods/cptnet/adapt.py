"""CPTNet's per-character adaptation (``keyface adapt --model cptnet-pose5``; the flow is :mod:`keyface.core.adapt`).

The shipped model's last two training stages, run on one character's teacher pairs: first the **face stage alone**
(stage 9: eyes and mouth, on the pairs whose head is at rest; ~1/5 of a whole-generator step here) for
:data:`FACE_SHARE` of the fine-tuning time, then the **whole generator** (stage 10) so the head stage follows the
changed trunk. Losses are those stages' (:data:`WEIGHTS`): supervised (no critic — the teacher's pairs supervise every
output, and five critic steps a step would leave a CPU budget a few dozen steps), L1 + perceptual + the bias-cancelled
changed-pixel term charged everywhere (what the render path shows), the face stage's saturation and content terms;
each pair is mirrored with probability ½ (:func:`.trainer.mirror`: winks both ways). The bias-cancelling pass at the
rest pose runs once per distinct image of the batch (:func:`keyface.core.adapt.once_per_image`: the painting and its
mirror image; the same values and gradients as the whole batch): measured on lambda_00's pairs, 12 minutes of
fine-tuning bought 340 face + 132 whole-generator steps instead of 225 + 76. The teacher renders half of the intents
with the head at rest (``render_poses``) so the face stage has pairs of its own. The folder holds
``generator.safetensors`` + its JSON (the model and the adaptation record), loadable as ``cptnet-pose5:FOLDER``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ...adapt import once_per_image
from ...pixels import to_net
from ...weights import pick_device
from . import PREFIX
from .losses import LossWeights, generator_losses
from .networks import drive, load_generator, save_generator
from .trainer import mirror

FILE = "generator.safetensors"  # what cptnet-pose5:FOLDER loads
FACE_LR, FULL_LR, BATCH = 2e-4, 1e-4, 8
FACE_SHARE = 0.35  # of the fine-tuning time, for the face stage alone (stage 9 took 11 of stages 9–10's 36 minutes;
# 0.7 measured on lambda_00, same pairs and time: blink +0.84 dB against THA3, head turn −2.40 dB — the model card)
WEIGHTS = replace(LossWeights(), adv=0.0, cancelled=1000.0, cancelled_everywhere=True, cancelled_outside=0.2,
                  saturation=2.0, saturation_ceiling=3.0, content=100.0)


class CPTNetAdapter:
    poses = "all"  # eyes, mouth and head: everything pose5 drives
    render_poses = ("all", "expression")  # the teacher's chunks alternate: half keep the head at rest (face stage)
    family = PREFIX  # adapted folders load as cptnet-pose5:FOLDER (the package's family)

    def __init__(self, info, device: str = "cpu", seed: int = 0, face_share: float = FACE_SHARE,
                 lrs: tuple = (FACE_LR, FULL_LR)):
        from ...features import load_features

        self.info, self.device, self.face_share, self.lrs = info, pick_device(device), face_share, lrs
        self.gen = load_generator(info.weights, self.device)
        self.features = load_features(None, self.device)
        self.rng = np.random.default_rng(seed)

    def _batch(self, rest, posed, d, pool):
        idx = self.rng.choice(pool, BATCH)
        r, p, c = mirror(rest[idx], posed[idx], d[idx], self.rng.random(BATCH) < 0.5)
        dev = self.device
        return to_net(r).to(dev), to_net(p).to(dev), torch.from_numpy(c).to(dev)

    def fit(self, pairs: dict, seconds: float, progress=None, should_stop=lambda: False,
            max_steps: int | None = None) -> dict:
        """Fine-tune for ``seconds`` of wall time (or until ``should_stop``, or ``max_steps`` in all): the face stage
        for ``face_share`` of it (when some pair keeps the head at rest), then the whole generator."""
        gen = self.gen.train()
        rest, posed, d = pairs["rest"], pairs["posed"], drive(pairs["param_pose5"])
        face_pool = np.flatnonzero((d[:, 3:] == 0).all(axis=1))
        everything = np.arange(len(d))
        face_seconds = seconds * self.face_share if len(face_pool) else 0.0
        face_steps = None if max_steps is None else (round(max_steps * self.face_share) if len(face_pool) else 0)
        t0, log, cancelled = time.perf_counter(), {"face": [], "full": []}, False
        for phase, pool, lr, until, cap in (("face", face_pool, self.lrs[0], face_seconds, face_steps),
                                            ("full", everything, self.lrs[1], seconds, max_steps)):
            opt = torch.optim.Adam(gen.parameters(), lr, betas=(0.5, 0.999))
            forward = gen.face_stage if phase == "face" else gen
            while time.perf_counter() - t0 < until and (cap is None or len(log["face"]) + len(log["full"]) < cap):
                if should_stop():
                    cancelled = True
                    break
                x, target, c = self._batch(rest, posed, d, pool)
                res = forward(x, c)
                rest_out = once_per_image(lambda im, f=forward, c=c: f(im, c.new_zeros(len(im), c.shape[1]))["out"], x)
                losses = generator_losses(res["out"], target, WEIGHTS, self.features, source=x, rest_out=rest_out,
                                          face_logit=res["face_logit"], face_content=res["face_content"],
                                          face_only=(c[:, 3:] == 0).all(1))
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt.step()
                log[phase].append(float(losses["cancelled"].detach()))
                if progress:
                    progress(min(time.perf_counter() - t0, seconds), seconds,
                             {"phase": phase, "step": len(log[phase]), "cancelled_l1": log[phase][-1]})
            if cancelled:
                break
        gen.eval()
        steps = len(log["face"]) + len(log["full"])
        first = next((v[0] for v in log.values() if v), None)
        last = next((v[-1] for v in reversed(log.values()) if v), None)
        return {"steps": steps, "face_steps": len(log["face"]), "full_steps": len(log["full"]),
                "seconds": round(time.perf_counter() - t0, 1), "batch": BATCH,
                "lr": "{:g} face, {:g}".format(*self.lrs), "cancelled_l1_first": first, "cancelled_l1_last": last,
                "cancelled_l1_face_first_last5": _ends(log["face"]),
                "cancelled_l1_full_first_last5": _ends(log["full"]), "cancelled": cancelled}

    def save(self, folder, record: dict) -> None:
        save_generator(self.gen, folder / FILE, {"adapted": record})

    def runtime(self):
        from .runtime import CPTNetRuntime

        return CPTNetRuntime(None, str(self.device), net=self.gen)


def _ends(values: list, n: int = 5) -> list:
    """The mean of the first and of the last ``n`` steps' losses (one step's batch is a noisy measure)."""
    return [float(np.mean(values[:n])), float(np.mean(values[-n:]))] if values else []
