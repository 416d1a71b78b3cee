"""CPTNet losses (seed 000 §3.4): L = L_adv + λ1·L_pair + λ2·L_p, λ1 = 1000, λ2 = 200.

* L_adv: WGAN with gradient penalty (σ = 10) on the final image; the critic is StarGAN's discriminator without the
  classification head. Critic: E[D(fake)] − E[D(real)] + σ·GP; generator: −E[D(fake)]. "Real" samples are the true
  target images of the paired corpus.
* L_pair: L1 between the final image and the ground truth (mean over pixels and channels).
* L_p: perceptual L1 on conv1_1, conv2_1, conv3_1, conv4_2 of the feature network (:mod:`keyface.core.features`:
  VGG19-shaped, trained by us on the synthetic corpus, since pretrained VGG weights cannot be downloaded here),
  equal weights.

Only the final image is supervised, as in the paper (the face stage, the branches and the masks are trained through
it). ``mode`` "supervised" drops L_adv (no critic; used for quick CPU runs and the ablation's equal budgets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ...features import perceptual_loss
from ...losses import gradient_penalty


@dataclass
class LossWeights:
    adv: float = 1.0
    pair: float = 1000.0
    perc: float = 200.0
    gp: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)


def critic_loss(critic, real: torch.Tensor, fake: torch.Tensor, w: LossWeights) -> dict:
    """One critic step's loss (``fake`` detached)."""
    adv = critic(fake).mean() - critic(real).mean()
    gp = gradient_penalty(critic, real, fake)
    return {"d_adv": adv, "d_gp": gp, "d_total": adv + w.gp * gp}


def generator_losses(out: torch.Tensor, target: torch.Tensor, w: LossWeights, features=None,
                     critic=None) -> dict:
    """The generator's terms for the final image ``out`` against ``target``; perceptual needs ``features``, the
    adversarial term ``critic``."""
    terms = {"pair": (out - target).abs().mean()}
    total = w.pair * terms["pair"]
    if features is not None and w.perc:
        terms["perc"] = perceptual_loss(features, out, target)
        total = total + w.perc * terms["perc"]
    if critic is not None and w.adv:
        terms["adv"] = -critic(out).mean()
        total = total + w.adv * terms["adv"]
    terms["total"] = total
    return terms
