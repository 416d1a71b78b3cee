"""Loss pieces shared by the methods' trainers (written once)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def gradient_penalty(score: Callable, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al.): (‖∇ score(x̂)‖ − 1)² at random points x̂ between real and fake samples.
    ``score``: the critic's adversarial output for a batch."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(score(mix).sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def changed_mask(target: torch.Tensor, source: torch.Tensor, threshold: float = 1.5 / 127.5) -> torch.Tensor:
    """(B, 1, H, W) 1 where the target differs from the source by more than ``threshold`` in any channel (images in
    [−1, 1]: the default is 0.75/255 of the [0, 1] range)."""
    return ((target - source).abs().amax(1, keepdim=True) > threshold).float()


def cancelled_l1(out: torch.Tensor, out_rest: torch.Tensor, target: torch.Tensor, source: torch.Tensor,
                 everywhere: bool = False, outside: float = 1.0) -> torch.Tensor:
    """The error the render path sees, on the pixels the pose changes: keyface applies a generator's output *minus its
    output at the rest pose* (bias cancellation, :mod:`keyface.core.pipeline`), so out − out_rest must equal the true
    change target − source. Averaged within each sample over the changed pixels (:func:`changed_mask`), then over the
    samples. A change that does not depend on the driving signal cancels and earns nothing, so — unlike a plain
    changed-pixel L1 — this term cannot be lowered by ignoring the signal. Measured (CPTNet ``mask`` variant, six
    one-eye blinks with their rest pairs, lr 1e-3): with the plain changed-pixel L1 the generator closed the eye
    whatever the pose said (pose-dependent change 0.003 after 100 steps, true change 0.83); with this term the
    pose-dependent change reached 0.66 after 50 steps.

    ``everywhere``: the error is summed over *every* pixel and still divided by the number of changed ones, so a change
    the pose does not ask for costs as much per pixel as a change it asks for and misses. Why: over the changed pixels
    only, closing both eyes for a one-eye signal costs nothing on the other eye (its pixels are not in the mask);
    measured on CPTNet, 680 + 235 fine-tuning steps with that term closed both eyes for either eye signal.
    ``outside`` weighs the pixels the pose leaves unchanged in that sum (1 = as much as the changed ones). Why less
    than 1: a mouth opening changes ~1 % of a 128² head crop (146–240 pixels, measured), so at weight 1 a faint stray
    change over the face costs up to a hundred times what opening the mouth gains. (Lowering it alone did not bring
    CPTNet's lost mouth back: its model card.)"""
    changed = changed_mask(target, source)
    if not everywhere:
        return masked_l1(out - out_rest, target - source, changed, per_sample=True)
    count = changed.flatten(1).sum(1)
    weight = changed + outside * (1 - changed)
    err = (out - out_rest - (target - source)).abs().mul(weight).flatten(1).sum(1) / out.shape[1]  # channel mean
    return (err / count.clamp(min=1))[count > 0].sum() / (count > 0).sum().clamp(min=1)


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Mean |a − b| over the pixels where ``mask`` is set (broadcast over channels).

    ``per_sample``: the mean is taken within each sample, then over the samples whose mask is not empty, so a sample
    with a small masked area (a smile's few mouth-corner pixels) weighs as much as one with a large area (a blink)."""
    m = mask.expand_as(a)
    err = (a - b).abs().mul(m)
    if not per_sample:
        return err.sum() / m.sum().clamp(min=1)
    count = m.flatten(1).sum(1)
    each = err.flatten(1).sum(1) / count.clamp(min=1)
    return each.sum() / (count > 0).sum().clamp(min=1)
