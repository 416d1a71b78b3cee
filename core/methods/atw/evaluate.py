"""Held-out evaluation of an ATW model through the whole render path, for its model card.

For each held-out character and target (blink, mouth open, smile): the character is rendered at ``size``² in the
standard framing; the rest image is the source; keyface's pipeline (face box → 128² crop → generator, bias-cancelled
against the rest pose → ResWarp in place) makes the frame; PSNR and SSIM are measured in the face box against the
engine's true render of the target, next to the identity baseline (the source itself)."""

from __future__ import annotations

import numpy as np

from ...metrics import psnr, ssim
from ...pipeline import FrameJob
from ...pixels import over_grey, quantise
from ...rig import convert
from ...synth.character import sample_character
from ...synth.face import Pose
from ...synth.render import REST
from ...synth.sample import PairRenderer, character_vector
from .trainer import EVAL_TARGETS


def evaluate_render(runtime, seeds, size: int = 512) -> dict:
    rows = {name: {"psnr": [], "psnr_identity": [], "ssim": [], "ssim_identity": []} for name in EVAL_TARGETS}
    for seed in seeds:
        pr = PairRenderer(sample_character(seed), (size, size))
        rest = pr.rest.image
        source = quantise(rest)
        box = pr.face_box(Pose(dict(REST)))
        job = FrameJob.prepare(source, runtime, box)
        x, y, w, h = box
        crop = (slice(y, y + h), slice(x, x + w))
        names = list(EVAL_TARGETS)
        values = convert(np.stack([character_vector({**REST, **EVAL_TARGETS[n]}) for n in names]), "character",
                         job.schema)
        frames = job.frames(values)
        for name, frame in zip(names, frames, strict=True):
            target = over_grey(pr.renderer.render({**REST, **EVAL_TARGETS[name]}).image[crop])
            ours = over_grey(frame[crop] / 255.0)
            base = over_grey(rest[crop])
            r = rows[name]
            r["psnr"].append(psnr(ours, target))
            r["psnr_identity"].append(psnr(base, target))
            r["ssim"].append(ssim(ours, target))
            r["ssim_identity"].append(ssim(base, target))
    return {n: {k: float(np.mean(v)) for k, v in r.items()} for n, r in rows.items()}
