"""ATW networks (seed 004 §3.2–3.3).

Generator G(I, c_t) at the grid size (128² by default):

* **Motion Network**: [I, tile(c_t)] → conv 3×3 → two stride-2 down-samplings → 6 residual blocks → two
  transposed-conv up-samplings → conv 3×3 → tanh × ``flow_scale`` pixels: the backward motion field F (keyface flow
  convention).
  Instance norm and ReLU throughout, as the paper says.
* **Warp**: O^w = warp(I, F).
* **Refinement Network**: [O^w, tile(c_t)] → the same encoder–decoder shape with 4 residual blocks, ELU and no
  normalisation (the paper: keeps colours consistent) → O^r.

Choices where the paper is silent (written down here): images are RGBA, *premultiplied*, in [-1, 1] (alpha matters
for painted characters on transparent backgrounds and premultiplied warping has no fringes); the refinement network
also sees the driving signal (it must paint content the warp cannot produce, e.g. the inside of an opening mouth) and
predicts a bounded correction, O^r = clamp(O^w + tanh(·), −1, 1), which the refine loss |O^w − O^r| keeps small;
``flow_scale`` is 24 px at 128² (an eyelid travels up to ~20 px there); channel widths are configurable (``base``,
default 32; the shipped model uses 16 to train on a 2-core CPU); 3×3 instead of 7×7 convolutions at full
resolution (5× cheaper); the driving signal also enters at the bottleneck and, AdaIN-style, in every residual block
(``adain``; instance norm erases a tiled constant signal — see :class:`keyface.core.blocks.EncoderDecoder`).

Critics (WGAN-GP, StarGAN-style PatchGAN trunks of stride-2 4×4 convs with LeakyReLU): **D^r** returns the
adversarial score map and the driving-signal prediction; **D^w** has only the driving head and judges the warped
image O^w.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ...blocks import EncoderDecoder, patch_trunk, warp
from ...weights import load_weights, save_weights
from .conditioning import DIM


@dataclass
class ATWConfig:
    grid: int = 128
    channels: int = 4          # RGBA premultiplied
    driving: int = DIM         # au17
    base: int = 32
    motion_blocks: int = 6
    refine_blocks: int = 4
    flow_scale: float = 24.0
    critic_base: int = 32
    critic_layers: int = 5
    adain: bool = True          # AdaIN-conditioned residual blocks (blocks.EncoderDecoder); False: older weights

    def to_dict(self) -> dict:
        return asdict(self)


class MotionNet(nn.Module):
    def __init__(self, cfg: ATWConfig):
        super().__init__()
        self.scale = cfg.flow_scale
        self.net = EncoderDecoder(cfg.channels, 2, cfg.driving, cfg.base, cfg.motion_blocks, "instance", "relu",
                                  cfg.adain)

    def forward(self, img, c):
        return torch.tanh(self.net(img, c)) * self.scale


class RefineNet(nn.Module):
    def __init__(self, cfg: ATWConfig):
        super().__init__()
        self.net = EncoderDecoder(cfg.channels, cfg.channels, cfg.driving, cfg.base, cfg.refine_blocks, "none", "elu",
                                  cfg.adain)

    def forward(self, warped, c):
        return (warped + torch.tanh(self.net(warped, c))).clamp(-1, 1)


class Generator(nn.Module):
    def __init__(self, cfg: ATWConfig):
        super().__init__()
        self.cfg = cfg
        self.motion = MotionNet(cfg)
        self.refine = RefineNet(cfg)

    def forward(self, img, c):
        """img (B, 4, H, W) premultiplied RGBA in [-1, 1]; c (B, D) → (O^r, O^w, F (B, 2, H, W) in pixels)."""
        flow = self.motion(img, c)
        warped = warp(img, flow)
        return self.refine(warped, c), warped, flow


class Critic(nn.Module):
    """PatchGAN trunk; ``adversarial`` adds the WGAN score map (D^r), the driving head is always there."""

    def __init__(self, cfg: ATWConfig, adversarial: bool = True):
        super().__init__()
        self.trunk, c = patch_trunk(cfg.channels, cfg.critic_base, cfg.critic_layers)
        self.adv = nn.Conv2d(c, 1, 3, padding=1) if adversarial else None
        size = cfg.grid // 2 ** cfg.critic_layers
        self.drv = nn.Conv2d(c, cfg.driving, size)

    def forward(self, img):
        h = self.trunk(img)
        drv = self.drv(h).flatten(1)
        return (self.adv(h), drv) if self.adv is not None else drv


def save_generator(gen: Generator, path, extra: dict | None = None) -> None:
    """Deployable weights: ``path`` (.safetensors) + the JSON config beside it."""
    save_weights(gen, path, "atw", extra)


def load_generator(path, device="cpu") -> Generator:
    """Weights written by :func:`save_generator` (shipped or trained), ready for inference on ``device``."""
    return load_weights(path, lambda m: Generator(ATWConfig(**m)), "atw", device)
