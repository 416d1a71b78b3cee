"""THA4 teacher body rotator (seed 001 §3–4, App. A–B): the half-resolution rotator (256²) and the editor (512²), both
U-Nets with attention conditioned on the 6 rotation values, with THA's warp / direct / blend image formation.

**Backbone** (App. A.1, after the diffusion-autoencoder U-Net): an input convolution; levels with channel multipliers
(Table 8), one residual block per level, a stride-2 down-sampling between levels; attention blocks (8 heads) only at
16×16; a bottleneck of 4 residual blocks alternating with 3 attention blocks; the decoder mirrors the encoder with
skip connections. Each residual block has two AdaIN units in succession (:class:`keyface.core.blocks.AdaIN`): the first
driven by the time embedding, the second by the pose. As in the paper the time value is always 0 (the embedding is
kept: a sinusoidal embedding of t = 0 through a small MLP, a learned constant in effect).

**Wrappers** (App. A.2–A.3): the rotator convolves the rest image to the base width, runs the backbone, and turns the
output features into an appearance flow (2 channels, normalised grid offsets; zero-initialised so training starts from
the identity warp), a direct RGBA image (tanh) and a blend alpha (sigmoid): blended = (1 − α)·warped + α·direct — the
convention of the official student (α weights the direct image). The editor adds the *coarse input processing
submodule*: the up-scaled half-resolution flow warps the full-resolution rest image, and [coarse blended, coarse flow,
coarse warped] are convolved and added to the convolved rest image. Without the submodule (``coarse=False``, phases 1–2
of App. B.2) the editor is a full-resolution rotator.

Choices where the paper is silent (written down): the decoder has one residual block per level (plus attention at 16²);
GroupNorm(min(32, C)) + SiLU before convolutions; the skip concatenation enters the decoder's residual block.

**Losses** (App. B): L1 (mean over C × H × W) and the perceptual term Φ on the feature network of
:mod:`keyface.core.features` (our offline, RGBA-aware network: VGG16's relu1_2, relu2_2, relu3_3 become conv1_2,
conv2_2, conv3_3 of our VGG19 shape, each term a mean so c_i = 1/#components; one 4-channel evaluation replaces the
paper's coin-flipped rgb / alpha evaluations of a 3-channel VGG). Phases: rotator L1 only (ℓ_L1 = 1, ℓ_percept = 0),
then ℓ_percept = 0.2; editor phase 3 adds the half-resolution and quadrant perceptual terms.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...blocks import AdaIN, EncoderDecoder, SelfAttention, identity_grid

ROTATION_DIM = 6  # head_x, head_y, neck_z, body_y, body_z, breathing (tha45 indices 39–44)
PERCEPT_TAPS = ("conv1_2", "conv2_2", "conv3_3")


@dataclass
class UNetConfig:
    size: int = 256
    base: int = 64
    mults: tuple = (1, 2, 4, 4, 4)
    attention_res: int = 16
    heads: int = 8
    bottleneck: int = 4
    cond: int = ROTATION_DIM

    def to_dict(self) -> dict:
        return asdict(self)


HALF_ROTATOR = UNetConfig(size=256, base=64, mults=(1, 2, 4, 4, 4))
EDITOR = UNetConfig(size=512, base=32, mults=(1, 2, 4, 8, 8, 8))


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, c), c)  # 32 groups when the width allows


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv → AdaIN(time) → AdaIN(pose) → SiLU → conv, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.inp = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.time_norm = AdaIN(cout, emb)
        self.cond_norm = AdaIN(cout, emb)
        self.out = nn.Sequential(nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, t_emb, c_emb):
        h = self.inp(x)
        h = self.cond_norm(self.time_norm(h, t_emb), c_emb)
        return self.skip(x) + self.out(h)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        emb = 4 * cfg.base
        self.time_mlp = nn.Sequential(nn.Linear(cfg.base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.cond, emb), nn.SiLU(), nn.Linear(emb, emb))
        widths = [cfg.base * m for m in cfg.mults]
        res = [cfg.size >> i for i in range(len(widths))]
        self.down_blocks, self.down_attn, self.downs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = cfg.base
        for i, w in enumerate(widths):
            self.down_blocks.append(ResBlock(c, w, emb))
            self.down_attn.append(SelfAttention(w, cfg.heads) if res[i] == cfg.attention_res else nn.Identity())
            self.downs.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
            c = w
        self.mid = nn.ModuleList([ResBlock(c, c, emb) for _ in range(cfg.bottleneck)])
        self.mid_attn = nn.ModuleList([SelfAttention(c, cfg.heads) for _ in range(cfg.bottleneck - 1)])
        self.up_blocks, self.up_attn = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            self.up_blocks.append(ResBlock(c + w, w, emb))
            self.up_attn.append(SelfAttention(w, cfg.heads) if res[i] == cfg.attention_res else nn.Identity())
            c = w
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.base, 3, padding=1))

    def _time(self, batch: int, device) -> torch.Tensor:
        half = self.cfg.base // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=device) / max(half, 1))
        t = torch.zeros(batch, 1, device=device)  # the time value is always 0 (App. A.1)
        return torch.cat([torch.sin(t * freqs), torch.cos(t * freqs)], 1)

    def forward(self, x, pose):
        t = self.time_mlp(self._time(len(x), x.device))
        c = self.cond_mlp(pose)
        skips = []
        for block, attn, down in zip(self.down_blocks, self.down_attn, self.downs, strict=True):
            x = attn(block(x, t, c))
            skips.append(x)
            x = down(x)
        for i, block in enumerate(self.mid):
            x = block(x, t, c)
            if i < len(self.mid_attn):
                x = self.mid_attn[i](x)
        for block, attn in zip(self.up_blocks, self.up_attn, strict=True):
            skip = skips.pop()
            if x.shape[-1] != skip.shape[-1]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = attn(block(torch.cat([x, skip], 1), t, c))
        return self.out(x)


def warp_normalised(img: torch.Tensor, grid_change: torch.Tensor) -> torch.Tensor:
    """grid_sample at identity + offsets (normalised units, align_corners=False, border) — THA's warp."""
    b, _, h, w = img.shape
    base = identity_grid(h, w, img.device, img.dtype)
    base = torch.stack([(2 * base[:, 0] + 1) / w - 1, (2 * base[:, 1] + 1) / h - 1], 1)
    grid = (base + grid_change).permute(0, 2, 3, 1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Heads(nn.Module):
    """Backbone features → flow (zero-initialised), direct RGBA (tanh), alpha (sigmoid); warp / direct / blend."""

    def __init__(self, base: int, channels: int = 4):
        super().__init__()
        self.flow = nn.Conv2d(base, 2, 3, padding=1)
        nn.init.zeros_(self.flow.weight)
        nn.init.zeros_(self.flow.bias)
        self.direct = nn.Conv2d(base, channels, 3, padding=1)
        self.alpha = nn.Conv2d(base, 1, 3, padding=1)

    def forward(self, feats, image) -> dict:
        flow = self.flow(feats)
        warped = warp_normalised(image, flow)
        direct = torch.tanh(self.direct(feats))
        alpha = torch.sigmoid(self.alpha(feats))
        return {"flow": flow, "warped": warped, "direct": direct, "alpha": alpha,
                "blended": (1 - alpha) * warped + alpha * direct}


class HalfResolutionRotator(nn.Module):
    def __init__(self, cfg: UNetConfig | None = None, channels: int = 4):
        super().__init__()
        self.cfg = cfg = cfg or HALF_ROTATOR
        self.inp = nn.Conv2d(channels, cfg.base, 3, padding=1)
        self.unet = UNet(cfg)
        self.heads = Heads(cfg.base, channels)

    def forward(self, image, pose) -> dict:
        """image (B, 4, S, S) official convention (the face-morphed rest image, downscaled); pose (B, 6)."""
        return self.heads(self.unet(self.inp(image), pose), image)


class Editor(nn.Module):
    def __init__(self, cfg: UNetConfig | None = None, channels: int = 4):
        super().__init__()
        self.cfg = cfg = cfg or EDITOR
        self.inp = nn.Conv2d(channels, cfg.base, 3, padding=1)
        self.coarse = nn.Conv2d(channels + 2 + channels, cfg.base, 3, padding=1)  # [blended, flow, warped]
        self.unet = UNet(cfg)
        self.heads = Heads(cfg.base, channels)

    def forward(self, image, pose, coarse_blended=None, coarse_flow=None) -> dict:
        """image (B, 4, S, S) full resolution; pose (B, 6); the half-resolution rotator's blended image and flow
        (any size: scaled up here). Without them (phases 1–2) the editor is a full-resolution rotator."""
        h = self.inp(image)
        if coarse_blended is not None:
            size = image.shape[-2:]
            cb = F.interpolate(coarse_blended, size=size, mode="bilinear", align_corners=False)
            cf = F.interpolate(coarse_flow, size=size, mode="bilinear", align_corners=False)
            h = h + self.coarse(torch.cat([cb, cf, warp_normalised(image, cf)], 1))
        return self.heads(self.unet(h, pose), image)


# ------------------------------------------------------------------------------------------------------ losses


def phi(features, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """App. B's perceptual distance on our RGBA feature network (mean |Δ| per tap = c_i·‖·‖₁)."""
    fa = features(a, PERCEPT_TAPS)
    with torch.no_grad():
        fb = features(b, PERCEPT_TAPS)
    return sum((x - y).abs().mean() for x, y in zip(fa, fb, strict=True))


def rotator_loss(out: dict, posed: torch.Tensor, l1: float = 1.0, percept: float = 0.0, features=None) -> dict:
    """L_HRR (App. B.1): ℓ_L1·Σ L1(warped, direct, blended) + ℓ_percept·Σ Φ(·)."""
    terms = {f"l1_{k}": (out[k] - posed).abs().mean() for k in ("warped", "direct", "blended")}
    total = l1 * sum(terms.values())
    if percept and features is not None:
        p = {f"percept_{k}": phi(features, out[k], posed) for k in ("warped", "direct", "blended")}
        terms.update(p)
        total = total + percept * sum(p.values())
    terms["total"] = total
    return terms


def quadrants(x: torch.Tensor) -> list[torch.Tensor]:
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]


def editor_loss(out: dict, posed: torch.Tensor, features, l1: float = 1.0, percept: float = 0.2) -> dict:
    """L_ED (App. B.2, phase 3): L1 on warped, direct, blended + perceptual on direct and blended at half
    resolution (DOWN) and on the four quadrants."""
    terms = {f"l1_{k}": (out[k] - posed).abs().mean() for k in ("warped", "direct", "blended")}
    down = lambda x: F.interpolate(x, scale_factor=0.5, mode="area")  # noqa: E731
    for k in ("direct", "blended"):
        terms[f"half_{k}"] = phi(features, down(out[k]), down(posed))
        terms[f"quad_{k}"] = sum(phi(features, q, p) for q, p in zip(quadrants(out[k]), quadrants(posed),
                                                                      strict=True))
    total = l1 * sum(v for k, v in terms.items() if k.startswith("l1_"))
    total = total + percept * sum(v for k, v in terms.items() if k.startswith(("half_", "quad_")))
    terms["total"] = total
    return terms


# ------------------------------------------------------------------------------------------------------ face morpher
#
# The teacher face morpher keeps THA3's design (the seed: "we will not modify this module"), three networks on the
# 128² face crop (THA3 write-up): the *eyebrow decomposer* splits the crop into a background layer (the face with the
# eyebrows removed and inpainted) and an eyebrow layer (RGBA); the *eyebrow morphing combiner* warps and retouches the
# eyebrow layer by the 12 eyebrow parameters and composites it over the background; the *face morpher* changes eyes,
# irises and mouth (the other 27 of the 39 face parameters) by warp / direct / blend. Taken from THA3: the three-network
# split, the layer decomposition and the image formation; our choice: each network is keyface's conditioned
# encoder–decoder (:class:`keyface.core.blocks.EncoderDecoder`, the pose tiled at the input and at the bottleneck).

EYEBROW_PARAMS = 12
FACE_MORPH_PARAMS = 27


@dataclass
class FaceTeacherConfig:
    size: int = 128
    base: int = 32
    blocks: int = 6

    def to_dict(self) -> dict:
        return asdict(self)


def over(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """Premultiplied "over" in the official convention ([−1, 1])."""
    t, b = (top + 1) / 2, (bottom + 1) / 2
    return (t + b * (1 - t[:, 3:4])) * 2 - 1


class EyebrowDecomposer(nn.Module):
    def __init__(self, cfg: FaceTeacherConfig):
        super().__init__()
        # outputs: background direct (4) + background alpha (1) + eyebrow layer (4)
        self.net = EncoderDecoder(4, 9, 0, cfg.base, cfg.blocks, "instance", "relu")

    def forward(self, face):
        o = self.net(face, face.new_zeros(len(face), 0))
        a = torch.sigmoid(o[:, 4:5])
        background = (1 - a) * face + a * torch.tanh(o[:, :4])
        return {"background": background, "eyebrow": torch.tanh(o[:, 5:9])}


class EyebrowMorphingCombiner(nn.Module):
    def __init__(self, cfg: FaceTeacherConfig):
        super().__init__()
        self.net = EncoderDecoder(8, cfg.base, EYEBROW_PARAMS, cfg.base, cfg.blocks, "instance", "relu")
        self.heads = Heads(cfg.base)

    def forward(self, background, eyebrow, pose12):
        out = self.heads(self.net(torch.cat([background, eyebrow], 1), pose12), eyebrow)
        out["combined"] = over(out["blended"], background)
        return out


class FaceMorpherNet(nn.Module):
    def __init__(self, cfg: FaceTeacherConfig):
        super().__init__()
        self.net = EncoderDecoder(4, cfg.base, FACE_MORPH_PARAMS, cfg.base, cfg.blocks, "instance", "relu")
        self.heads = Heads(cfg.base)

    def forward(self, face, pose27):
        return self.heads(self.net(face, pose27), face)


class FaceTeacher(nn.Module):
    """The 128² face crop + pose[0:39] → the morphed crop (and every intermediate, for training)."""

    def __init__(self, cfg: FaceTeacherConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FaceTeacherConfig()
        self.decomposer = EyebrowDecomposer(cfg)
        self.combiner = EyebrowMorphingCombiner(cfg)
        self.morpher = FaceMorpherNet(cfg)

    def forward(self, face, pose) -> dict:
        layers = self.decomposer(face)
        comb = self.combiner(layers["background"], layers["eyebrow"], pose[:, :EYEBROW_PARAMS])
        morphed = self.morpher(comb["combined"], pose[:, EYEBROW_PARAMS:EYEBROW_PARAMS + FACE_MORPH_PARAMS])
        return {"background": layers["background"], "eyebrow": layers["eyebrow"], "combined": comb["combined"],
                "out": morphed["blended"], "flow": morphed["flow"]}
