"""ATW losses (seed 004 §3.3) and the supervised terms our paired corpus allows.

Paper terms (weights: λ_rec 10, λ_drv 1, λ_warp 1, λ_adv 1, λ_ref 10, gradient penalty σ = 10):

* critic D^r: λ_adv·(E[D(O^r)] − E[D(I)] + σ·GP) + λ_drv·MSE(c_s, D^r_drv(I))           (eq. 1–3)
* critic D^w: MSE(c_s, D^w(I))                                                            (eq. 4)
* generator: λ_adv·(−E[D(O^r)]) + λ_drv·MSE(c_t, D^r_drv(O^r)) + λ_warp·MSE(c_t, D^w(O^w))
  + λ_ref·|O^w − O^r| + λ_rec·|G(O^r, c_s) − I|                                            (eq. 5–10)

Supervised terms (our addition; the synthetic corpus gives the true target and flow): λ_img·|O^r − T| over the image,
λ_flow·|F − F_gt| (pixels) and λ_wimg·|O^w − T| over the pixels visible in both images (the ground-truth visibility):
the warp must explain what the warp can explain, the refinement paints the rest. An expression changes a few percent
of the pixels, so the same two errors are also averaged over the changed pixels only (λ_img_changed·|O^r − T| where
T ≠ I, λ_flow_moving·|F − F_gt| where the true flow is non-zero): measured, without them the generator learned to copy
its input for the first thousand steps. Pooled over a batch, those averages are dominated by the samples that change
many pixels (a blink: ~5 % of a face crop; a smile: ~0.3 %); ``changed_per_sample`` averages them within each sample
first, so every expression in the batch weighs the same (our addition, meant for smile training).
``img_cancelled`` (our addition, off by default) is the changed-pixel L1 of the bias-cancelled image, G(I, c_t) −
G(I, c_s) against T − I (:func:`keyface.core.losses.cancelled_l1`): what the render path applies; a change that ignores
the driving signal cancels there, and this term does not reward it (one more generator pass per step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F

from ...losses import cancelled_l1, changed_mask, gradient_penalty, masked_l1


@dataclass
class LossWeights:
    rec: float = 10.0
    drv: float = 1.0
    warp: float = 1.0
    adv: float = 1.0
    ref: float = 10.0
    gp: float = 10.0
    img: float = 10.0
    flow: float = 1.0
    wimg: float = 10.0
    img_changed: float = 10.0
    flow_moving: float = 1.0
    changed_per_sample: bool = False  # average the two "changed" terms per sample (see the module docstring)
    img_cancelled: float = 0.0       # bias-cancelled changed-pixel L1 (see the module docstring); 0 = off

    def to_dict(self) -> dict:
        return asdict(self)


def critic_losses(dr, dw, real, fake, c_s, w: LossWeights) -> dict:
    """Losses of D^r and D^w for one critic step (``fake`` detached)."""
    s_real, drv_real = dr(real)
    s_fake, _ = dr(fake)
    adv = s_fake.mean() - s_real.mean() + w.gp * gradient_penalty(lambda x: dr(x)[0], real, fake)
    drv = F.mse_loss(drv_real, c_s)
    return {"d_adv": adv, "d_drv": drv, "d_r": w.adv * adv + w.drv * drv, "d_w": F.mse_loss(dw(real), c_s)}


def generator_losses(g, img, c_s, c_t, out, w: LossWeights, *, target=None, flow_gt=None, visible=None,
                     dr=None, dw=None, rest=None) -> dict:
    """Generator losses. ``out`` = g(img, c_t); GAN terms need the critics, supervised ones the ground truth, the
    cancelled term ``rest`` = g(img, c_s)'s refined image."""
    refined, warped, flow = out
    terms = {"ref": (warped - refined).abs().mean()}
    total = w.ref * terms["ref"]
    if w.rec:  # the cycle back to the source (a third generator pass; off when pairs supervise, as in adaptation)
        recon, _, _ = g(refined, c_s)
        terms["rec"] = (recon - img).abs().mean()
        total = total + w.rec * terms["rec"]
    if dr is not None:
        score, drv = dr(refined)
        terms["adv"] = -score.mean()
        terms["drv"] = F.mse_loss(drv, c_t)
        terms["warp"] = F.mse_loss(dw(warped), c_t)
        total = total + w.adv * terms["adv"] + w.drv * terms["drv"] + w.warp * terms["warp"]
    if target is not None:
        terms["img"] = (refined - target).abs().mean()
        terms["flow"] = masked_l1(flow, flow_gt, visible)
        terms["wimg"] = masked_l1(warped, target, visible)
        changed = changed_mask(target, img)
        moving = (flow_gt.abs().amax(1, keepdim=True) > 0.05).float() * visible
        terms["img_changed"] = masked_l1(refined, target, changed, w.changed_per_sample)
        terms["flow_moving"] = masked_l1(flow, flow_gt, moving, w.changed_per_sample)
        total = (total + w.img * terms["img"] + w.flow * terms["flow"] + w.wimg * terms["wimg"]
                 + w.img_changed * terms["img_changed"] + w.flow_moving * terms["flow_moving"])
        if rest is not None and w.img_cancelled:
            terms["img_cancelled"] = cancelled_l1(refined, rest, target, img)
            total = total + w.img_cancelled * terms["img_cancelled"]
    terms["total"] = total
    return terms
