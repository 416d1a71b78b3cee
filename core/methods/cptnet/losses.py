"""CPTNet losses (seed 000 §3.4): L = L_adv + λ1·L_pair + λ2·L_p, λ1 = 1000, λ2 = 200.

* L_adv: WGAN with gradient penalty (σ = 10) on the final image; the critic is StarGAN's discriminator without the
  classification head. Critic: E[D(fake)] − E[D(real)] + σ·GP; generator: −E[D(fake)]. "Real" samples are the true
  target images of the paired corpus.
* L_pair: L1 between the final image and the ground truth (mean over pixels and channels).
* L_p: perceptual L1 on conv1_1, conv2_1, conv3_1, conv4_2 of the feature network (:mod:`keyface.core.features`:
  VGG19-shaped, trained by us on the synthetic corpus, since pretrained VGG weights cannot be downloaded here),
  equal weights.

* L_changed (our addition, off by default: ``changed`` = 0): the same L1 averaged only over the pixels where the target
  differs from the input, within each sample (:func:`keyface.core.losses.masked_l1` with ``per_sample``). A one-eye
  blink changes 0.6–0.7 % of a 128² head crop (measured on two characters), so under L_pair alone the cheapest start
  is to copy the input: measured, the ``mask`` variant changed 3 pixels for eye_left = 0 after 500 steps at batch 8.
  The ablation's runs and the shipped model's first stage use ``changed`` = 1000 (= λ1), the same for every variant:
  with it head turns are learned within 800 steps, eyes and mouth not (see the model card).

* L_cancelled (our addition, off by default: ``cancelled`` = 0): the changed-pixel L1 of the *bias-cancelled* output
  (:func:`keyface.core.losses.cancelled_l1`): G(I, d) − G(I, rest) against the true change, as the render path applies
  it. The plain L_changed can be lowered by changes that ignore the pose (measured: a generator trained with it closed
  the eyes at every pose, which the render path's cancellation then removes — one reason the first shipped model
  never blinks); this one cannot. Costs a second generator pass at the rest pose per step. ``cancelled_everywhere``
  also charges the changes the pose does not ask for (closing the other eye on a wink) per changed pixel, weighted by
  ``cancelled_outside``.

* L_saturation (our addition, off by default: ``saturation`` = 0): mean of max(|ℓ| − ``saturation_ceiling``, 0)² over
  the face stage's attention logits ℓ (A = σ(ℓ)). Why: stage 5's face stage (the model card) kept every pixel with
  ℓ ≈ 9 at the median (measured on 30 training pairs; 98 % beyond ±5) and ℓ ≈ 12.4 on the pixels an open mouth
  changes, where σ' ≈ 4·10⁻⁶ and the content head's gradient (1 − A) as small: the mouth could not be learned back by
  fine-tuning (60 steps with a mouth share: the bias-cancelled mouth change stayed exactly zero). Held within ±5
  (A ≥ 0.993), both gradients are ~1,000× larger; what the kept pixels' small leak adds does not depend on the pose,
  so the render path's bias cancellation removes it. Measured: this alone brought the median logit down (9 → 7.5 in
  30 steps), not the mouth; with the face stage trained alone (``face_stage``, the trainer) it did (stages 6–7).

* L_content (our addition, off by default: ``content`` = 0): the face stage's content head C against the target, L1
  over the pixels the pose changes, per sample, on the pairs whose head pose is at rest (there the whole change is the
  face stage's). Why: through the final image C only gets a gradient scaled by 1 − A; measured on 16 open-mouth pairs,
  stage 5's C on the mouth pixels was 0.78 from the target where the unchanged image is 0.28 (units of [−1, 1]), so
  letting C through there could only raise the loss — a saddle the saturation term alone did not leave (the
  bias-cancelled mouth change stayed zero over 100 mixed steps). Measured: with it C's error there fell 0.614 → 0.352
  on held-out pairs in 240 steps (the unchanged image: 0.387), and the mouth still did not move (model card) until the
  face stage was trained alone.

Only the final image is supervised, as in the paper (the face stage, the branches and the masks are trained through
it), unless the trainer's ``face_stage`` (our addition) trains the face stage's own image. ``mode`` "supervised"
drops L_adv (no critic; used for quick CPU runs and the ablation's equal budgets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ...features import perceptual_loss
from ...losses import cancelled_l1, changed_mask, gradient_penalty, masked_l1


@dataclass
class LossWeights:
    adv: float = 1.0
    pair: float = 1000.0
    perc: float = 200.0
    gp: float = 10.0
    changed: float = 0.0
    cancelled: float = 0.0
    cancelled_everywhere: bool = False  # L_cancelled over every pixel, per changed pixel (see cancelled_l1)
    cancelled_outside: float = 1.0  # with cancelled_everywhere: the weight of the pixels the pose leaves unchanged
    saturation: float = 0.0
    saturation_ceiling: float = 5.0
    content: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def critic_loss(critic, real: torch.Tensor, fake: torch.Tensor, w: LossWeights) -> dict:
    """One critic step's loss (``fake`` detached)."""
    adv = critic(fake).mean() - critic(real).mean()
    gp = gradient_penalty(critic, real, fake)
    return {"d_adv": adv, "d_gp": gp, "d_total": adv + w.gp * gp}


def generator_losses(out: torch.Tensor, target: torch.Tensor, w: LossWeights, features=None,
                     critic=None, source: torch.Tensor | None = None, rest_out: torch.Tensor | None = None,
                     face_logit: torch.Tensor | None = None, face_content: torch.Tensor | None = None,
                     face_only: torch.Tensor | None = None) -> dict:
    """The generator's terms for the final image ``out`` against ``target``; perceptual needs ``features``, the
    adversarial term ``critic``, the changed-pixel terms the input image ``source`` (and the cancelled one the
    generator's output at the rest pose, ``rest_out``), the saturation term the face stage's attention logits, the
    content term its content head and ``face_only`` (B,) bool, the pairs whose head pose is at rest."""
    terms = {"pair": (out - target).abs().mean()}
    total = w.pair * terms["pair"]
    if source is not None and rest_out is not None and w.cancelled:
        terms["cancelled"] = cancelled_l1(out, rest_out, target, source, w.cancelled_everywhere,
                                         w.cancelled_outside)
        total = total + w.cancelled * terms["cancelled"]
    if source is not None and w.changed:
        terms["changed"] = masked_l1(out, target, changed_mask(target, source), per_sample=True)
        total = total + w.changed * terms["changed"]
    if face_logit is not None and w.saturation:
        terms["saturation"] = (face_logit.abs() - w.saturation_ceiling).clamp(min=0).pow(2).mean()
        total = total + w.saturation * terms["saturation"]
    if face_content is not None and face_only is not None and source is not None and w.content:
        keep = face_only.bool()
        terms["content"] = (masked_l1(face_content[keep], target[keep], changed_mask(target[keep], source[keep]),
                                      per_sample=True) if keep.any() else face_content.sum() * 0)
        total = total + w.content * terms["content"]
    if features is not None and w.perc:
        terms["perc"] = perceptual_loss(features, out, target)
        total = total + w.perc * terms["perc"]
    if critic is not None and w.adv:
        terms["adv"] = -critic(out).mean()
        total = total + w.adv * terms["adv"]
    terms["total"] = total
    return terms
