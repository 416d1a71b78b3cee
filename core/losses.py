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


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |a − b| over the pixels where ``mask`` is set (broadcast over channels)."""
    m = mask.expand_as(a)
    return (a - b).abs().mul(m).sum() / m.sum().clamp(min=1)
