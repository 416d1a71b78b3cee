"""CPTNet networks (seed 000 §3, §4.1): a face stage and a head stage built from one shared trunk.

* **Mask generator** (StarGAN generator with GANimation's two heads): [I, tile(p)] → encoder (conv, two stride-2
  down-samplings, residual blocks) → decoder (two up-samplings) → last conv with two heads: a 1-channel attention mask
  A = σ(·) and content C = tanh(·); output (1 − A)·C + A·I (A = 1 keeps the input pixel).
* **Grid generator**: the *same* encoder and residual blocks (shared weights, the paper), its own decoder, a 2-channel
  output added to the identity sampling grid (in the normalised units of ``grid_sample``), bilinear sampling.
* **Fusion**: [I_mask, I_grid] → two stride-2 down-samplings, two up-samplings → 1-channel mask A;
  output (1 − A)·I_mask + A·I_grid.
* **Face stage** = the mask generator driven by the expression part of the pose; **head stage** = mask branch (the same
  generator, shared weights) with **pose-vector decomposition and cascaded refinement**: k applications, the i-th
  driven by the head pose × i/k, each on the previous one's output (k = 4, the paper), plus the grid branch on the
  face stage's output with the whole head pose, then the fusion.
* **Critic**: the StarGAN discriminator without its classification head (a PatchGAN score map).

Choices where the paper is silent (written down here):

* Conditioning: the pose5 vector re-expressed so that zero is the rest pose, d = (1 − eye_left, 1 − eye_right, mouth,
  head_pitch, head_yaw) (:func:`drive`): the paper's decomposition example "(0, 0, 0, 0, 1/k)" then means a fraction of
  a head turn with the face at rest. The face stage sees (d₀, d₁, d₂, 0, 0), the head stage (0, 0, 0, d₃, d₄)·i/k.
* Images are RGBA, premultiplied, in [−1, 1] (as ATW): C has 4 channels, warping premultiplied colour has no fringes.
* The trunk is :class:`keyface.core.blocks.EncoderDecoder` (3×3 first conv instead of StarGAN's 7×7). Besides the
  paper's tiled pose at the input (and at the bottleneck), its residual blocks are AdaIN-conditioned on the pose
  (``adain``): instance norm erases a constant input plane (see the EncoderDecoder docstring; the shipped model's
  first stage was trained without it, the layers were added at zero). ``coords`` (off by default) also gives the trunk
  the pixel coordinates: which eye an eye signal closes is a matter of position (see the EncoderDecoder docstring).
  Widths are configurable: ``base`` 64 is StarGAN's; CPU runs use 16.
* The grid decoder's last convolution starts at zero (the identity grid): the grid branch begins as a copy. Likewise
  the attention head's bias starts at :data:`KEEP_BIAS` (A ≈ 0.95): each mask step begins by mostly keeping its input
  instead of blending it half-and-half with untrained content (measured on the mask variant, default init: L1 still 7×
  the identity baseline's after 250 steps).
* Ablation variants (Table 1): ``mask`` (head stage = one mask step), ``grid`` (grid branch only), ``mask+grid``
  (fusion, k = 1), ``mask+grid+ms`` (the full model, k steps). The face stage is the mask generator in every variant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ...blocks import EncoderDecoder, conv_unit, patch_trunk, up_decoder, warp
from ...weights import load_weights, save_weights

VARIANTS = ("mask", "grid", "mask+grid", "mask+grid+ms")
POSE_DIM = 5
KEEP_BIAS = 3.0  # initial bias of the attention head: σ(3) ≈ 0.95 of each input pixel kept
FACE = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
HEAD = 1 - FACE


def drive(pose5: np.ndarray) -> np.ndarray:
    """pose5 values (…, 5) → the conditioning vector (zero at the rest pose)."""
    p = np.asarray(pose5, np.float32)
    return np.concatenate([1 - p[..., :2], p[..., 2:]], axis=-1)


@dataclass
class CPTNetConfig:
    size: int = 256
    channels: int = 4           # RGBA premultiplied
    pose: int = POSE_DIM
    base: int = 64
    blocks: int = 6
    k: int = 4                  # cascade steps of the head stage's mask branch
    variant: str = "mask+grid+ms"
    fusion_base: int = 32
    critic_base: int = 64
    critic_layers: int = 6
    adain: bool = True          # AdaIN-conditioned residual blocks (blocks.EncoderDecoder); False: older weights
    coords: bool = False        # coordinate channels at the trunk's input (blocks.EncoderDecoder; our addition)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        if self.k < 1:
            raise ValueError("k must be at least 1")

    @property
    def steps(self) -> int:
        """Mask-branch applications in the head stage."""
        return self.k if self.variant == "mask+grid+ms" else 1

    @property
    def uses_mask(self) -> bool:
        return self.variant != "grid"

    @property
    def uses_grid(self) -> bool:
        return "grid" in self.variant

    def to_dict(self) -> dict:
        return asdict(self)


class Fusion(nn.Module):
    def __init__(self, channels: int, base: int):
        super().__init__()
        self.net = nn.Sequential(
            conv_unit(2 * channels, base, 4, stride=2), conv_unit(base, 2 * base, 4, stride=2),
            conv_unit(2 * base, base, transpose=True), conv_unit(base, base, transpose=True),
            nn.Conv2d(base, 1, 3, padding=1))

    def forward(self, a, b):
        return torch.sigmoid(self.net(torch.cat([a, b], 1)))


class Generator(nn.Module):
    def __init__(self, cfg: CPTNetConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        # the shared trunk; its decoder (``trunk.up``) is the mask generator's, with A and C heads (1 + c channels)
        self.trunk = EncoderDecoder(c, 1 + c, cfg.pose, cfg.base, cfg.blocks, "instance", "relu", cfg.adain,
                                    cfg.coords)
        with torch.no_grad():
            self.trunk.up[-1].bias[0] = KEEP_BIAS
        self.grid_up = up_decoder(cfg.base, 2) if cfg.uses_grid else None
        if self.grid_up is not None:
            nn.init.zeros_(self.grid_up[-1].weight)
            nn.init.zeros_(self.grid_up[-1].bias)
        self.fusion = Fusion(c, cfg.fusion_base) if cfg.uses_mask and cfg.uses_grid else None

    def mask_parts(self, x, d):
        """The mask generator's two heads → (attention logit (B, 1, H, W), content C)."""
        o = self.trunk(x, d)
        return o[:, :1], torch.tanh(o[:, 1:])

    @staticmethod
    def blend(x, logit, content):
        """A = σ(logit) of each input pixel kept, the rest from the content → (output, A)."""
        a = torch.sigmoid(logit)
        return (1 - a) * content + a * x, a

    def mask_step(self, x, d):
        """One application of the mask generator → (output, attention mask A)."""
        return self.blend(x, *self.mask_parts(x, d))

    def grid_step(self, x, d):
        """The grid generator → (output, backward flow in pixels, keyface convention)."""
        off = self.grid_up(self.trunk.encode(x, d))  # normalised grid units: ±1 = half the image
        h, w = x.shape[2:]
        flow = torch.stack([off[:, 0] * (w / 2), off[:, 1] * (h / 2)], 1)
        return warp(x, flow), flow

    def face_stage(self, img, d) -> dict:
        """The face stage alone, driven by the expression part of ``d`` → ``face`` (its image, also as ``out``),
        ``face_mask``, ``face_logit``, ``face_content``."""
        logit, content = self.mask_parts(img, d * FACE.to(d))
        face, mask = self.blend(img, logit, content)
        return {"out": face, "face": face, "face_mask": mask, "face_logit": logit, "face_content": content}

    def forward(self, img, d) -> dict:
        """img (B, C, H, W) premultiplied RGBA in [−1, 1]; d (B, 5) conditioning (:func:`drive`) → a dict with
        ``out`` (the final image), ``face`` (face stage), ``mask_out`` / ``grid_out`` (head-stage branches),
        ``face_mask`` (its logit ``face_logit``, its content ``face_content``), ``mask_keep`` (the product of the
        cascade's masks: how much of each input pixel the mask branch kept in place), ``fusion_mask`` (A of the fusion;
        1 = grid branch), ``flow`` (grid branch, pixels)."""
        head_d = d * HEAD.to(d)
        out = self.face_stage(img, d)
        face = out["face"]
        if self.cfg.uses_mask:
            x, keep = face, torch.ones_like(out["face_mask"])
            for i in range(1, self.cfg.steps + 1):
                x, a = self.mask_step(x, head_d * (i / self.cfg.steps))
                keep = keep * a
            out["mask_out"], out["mask_keep"] = x, keep
        if self.cfg.uses_grid:
            out["grid_out"], out["flow"] = self.grid_step(face, head_d)
        if self.fusion is not None:
            a = self.fusion(out["mask_out"], out["grid_out"])
            out["fusion_mask"] = a
            out["out"] = (1 - a) * out["mask_out"] + a * out["grid_out"]
        else:
            out["out"] = out["mask_out"] if self.cfg.uses_mask else out["grid_out"]
        return out


class Critic(nn.Module):
    """StarGAN's discriminator without the classification head: a PatchGAN WGAN score map."""

    def __init__(self, cfg: CPTNetConfig):
        super().__init__()
        self.trunk, width = patch_trunk(cfg.channels, cfg.critic_base, cfg.critic_layers)
        self.adv = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, img):
        return self.adv(self.trunk(img))


def save_generator(gen: Generator, path, extra: dict | None = None) -> None:
    """Deployable weights: ``path`` (.safetensors) + the JSON config beside it."""
    save_weights(gen, path, "cptnet", extra)


def load_generator(path, device="cpu") -> Generator:
    """Weights written by :func:`save_generator` (shipped or trained), ready for inference on ``device``."""
    return load_weights(path, lambda m: Generator(CPTNetConfig(**m)), "cptnet", device)
