"""ATW's per-character adaptation (``keyface adapt --model atw-au17``; the flow is :mod:`keyface.core.adapt`).

A copy of the generator is fine-tuned on the teacher's pairs of one character with the supervised image terms of
:mod:`.losses` and the bias-cancelled term (what the render path applies: G(I, c_t) − G(I, c_s) against T − I), at
Adam 1e-4, batch 8. The teacher gives no motion field, so the flow terms have nothing to compare with (their masks are
empty: they are zero) and the warp learns only through the images. For speed (the budget is minutes on a CPU) the
cycle term (``rec``, which regularises the paper's unpaired training) is off — the teacher's pairs supervise every
output directly — and G(I, c_s) runs once for the batch's one rest image (:func:`keyface.core.adapt.once_per_image`:
the same values and gradients): that pass runs on one image instead of the batch's eight (not timed for ATW; the full
loss takes three passes). G(I, c_s) keeps its gradient: measured on the tiny test batch, with it treated as a constant
the cancelled loss fell 2 % in 40 steps instead of over 30 % (the rest output moves with the shared weights, and only
the joint gradient sees that). The folder holds ``atw_au17.safetensors`` + its JSON (the model and the adaptation
record), loadable as ``atw-au17:FOLDER``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ...adapt import once_per_image
from ...pixels import to_net
from ...weights import pick_device, save_weights
from .conditioning import driving
from .losses import LossWeights, generator_losses
from .networks import load_generator

FILE = "atw_au17.safetensors"
LR, BATCH = 1e-4, 8
WEIGHTS = replace(LossWeights(), img_cancelled=10.0, rec=0.0)


class ATWAdapter:
    poses = "expression"  # ATW drives expressions only: head and body stay at rest
    family = "atw-au17"  # adapted folders load as atw-au17:FOLDER (the package's family)

    def __init__(self, info, device: str = "cpu", seed: int = 0, lr: float = LR):
        self.info, self.device, self.lr = info, pick_device(device), lr
        self.gen = load_generator(info.weights, self.device)
        self.rng = np.random.default_rng(seed)

    def fit(self, pairs: dict, seconds: float, progress=None, should_stop=lambda: False,
            max_steps: int | None = None) -> dict:
        """Fine-tune for ``seconds`` of wall time (or until ``should_stop``, or ``max_steps``)."""
        gen, dev = self.gen.train(), self.device
        opt = torch.optim.Adam(gen.parameters(), self.lr, betas=(0.5, 0.999))
        img_all, tgt_all = to_net(pairs["rest"]), to_net(pairs["posed"])
        c_all = torch.from_numpy(driving(pairs["values"]))
        t0, step, first, last, cancelled = time.perf_counter(), 0, None, None, False
        while time.perf_counter() - t0 < seconds and (max_steps is None or step < max_steps):
            if should_stop():
                cancelled = True
                break
            idx = torch.from_numpy(self.rng.integers(0, len(img_all), BATCH))
            img, target, c_t = img_all[idx].to(dev), tgt_all[idx].to(dev), c_all[idx].to(dev)
            c_s = torch.zeros_like(c_t)
            out = gen(img, c_t)
            rest = once_per_image(lambda im, c=c_s: gen(im, c[:len(im)])[0], img)
            zeros = torch.zeros(len(idx), 2, *img.shape[2:], device=dev)
            losses = generator_losses(gen, img, c_s, c_t, out, WEIGHTS, target=target, flow_gt=zeros,
                                      visible=zeros[:, :1], rest=rest)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            step += 1
            last = float(losses["img_cancelled"].detach())
            first = last if first is None else first
            if progress:
                progress(min(time.perf_counter() - t0, seconds), seconds, {"step": step, "cancelled_l1": last})
        gen.eval()
        return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "batch": BATCH, "lr": self.lr,
                "cancelled_l1_first": first, "cancelled_l1_last": last, "cancelled": cancelled}

    def save(self, folder, record: dict) -> None:
        save_weights(self.gen, folder / FILE, "atw", {"adapted": record})

    def runtime(self):
        from .runtime import ATWRuntime

        return ATWRuntime(None, str(self.device), net=self.gen)
