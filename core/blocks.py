"""Network blocks shared by the generators (written once): convolution units, residual blocks, the conditioned
encoder–decoder (ATW's motion and refinement networks, CPTNet's mask and grid generators), AdaIN, SPADE, attention,
and warping by a keyface flow.

Warping follows keyface's flow convention (see :mod:`keyface.core.reswarp`): a backward flow in pixels, output pixel
(x, y) reads the input at (x + flow_x, y + flow_y), bilinear, border replicate, pixel centres at half-integers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "elu": lambda: nn.ELU(inplace=True),
               "lrelu": lambda: nn.LeakyReLU(0.2, inplace=True), "none": nn.Identity}


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def conv_unit(cin: int, cout: int, k: int = 3, stride: int = 1, norm: str = "instance", act: str = "relu",
              transpose: bool = False) -> nn.Sequential:
    """conv (or stride-2 transposed conv when ``transpose``) → norm → activation."""
    if transpose:
        conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=norm == "none")
    else:
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(k - stride + 1) // 2, bias=norm == "none")
    return nn.Sequential(conv, norm_layer(norm, cout), ACTIVATIONS[act]())


class ResBlock(nn.Module):
    """x + conv-norm-act-conv-norm(x). With ``cond`` > 0 the block is conditioned AdaIN-style: after the first norm
    and before the activation, h ← h·(1 + γ(c)) + β(c) with (γ, β) a linear map of the conditioning vector, started
    at zero (the block begins as the unconditioned one, so older weights load and behave the same). Placing it before
    the activation matters: a per-channel shift that reaches a later normalised convolution unchanged is erased."""

    def __init__(self, channels: int, norm: str = "instance", act: str = "relu", cond: int = 0):
        super().__init__()
        self.body = nn.Sequential(conv_unit(channels, channels, norm=norm, act=act),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none"),
                                  norm_layer(norm, channels))
        self.film = None
        if cond:
            self.film = nn.Linear(cond, 2 * channels)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x, c=None):
        if self.film is None:
            return x + self.body(x)
        conv, norm, act = self.body[0]
        h = act(modulate(norm(conv(x)), self.film, c))
        return x + self.body[2](self.body[1](h))


class AdaIN(nn.Module):
    """Adaptive instance norm: normalise, then scale and shift from a conditioning vector."""

    def __init__(self, channels: int, cond: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(cond, 2 * channels)

    def forward(self, x, c):
        return modulate(self.norm(x), self.affine, c)


def modulate(h: torch.Tensor, affine: nn.Linear, c: torch.Tensor) -> torch.Tensor:
    """h·(1 + γ) + β per channel, (γ, β) = ``affine(c)`` (AdaIN's scale and shift, after its normalisation)."""
    gamma, beta = affine(c).chunk(2, dim=1)
    return h * (1 + gamma[..., None, None]) + beta[..., None, None]


class SPADE(nn.Module):
    """Spatially adaptive norm: scale and shift maps predicted from a conditioning image (resized to x)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, cond):
        cond = F.interpolate(cond, size=x.shape[2:], mode="nearest")
        h = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over spatial positions, residual."""

    def __init__(self, channels: int, heads: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(32, channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(t, t, t, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def patch_trunk(cin: int, base: int, layers: int, max_width: int = 512) -> tuple[nn.Sequential, int]:
    """StarGAN's discriminator trunk: ``layers`` stride-2 4×4 convs with LeakyReLU(0.01), widths doubling from
    ``base`` (capped). Returns the trunk and its output width."""
    mods, c, width = [], cin, base
    for _ in range(layers):
        mods += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.LeakyReLU(0.01, inplace=True)]
        c, width = width, min(width * 2, max_width)
    return nn.Sequential(*mods), c


class PatchCritic(nn.Module):
    """An unconditional PatchGAN critic: :func:`patch_trunk` (``layers`` stride-2 convs) and a 3×3 conv to one score
    per patch (F³A's D(Î_t))."""

    def __init__(self, cin: int = 4, base: int = 16, layers: int = 3):
        super().__init__()
        self.trunk, c = patch_trunk(cin, base, layers)
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x):
        return self.out(self.trunk(x))


def up_decoder(base: int, cout: int, norm: str = "instance", act: str = "relu") -> nn.Sequential:
    """Two transposed-conv up-samplings (4·base → 2·base → base) and a 3×3 conv to ``cout``."""
    return nn.Sequential(
        conv_unit(4 * base, 2 * base, norm=norm, act=act, transpose=True),
        conv_unit(2 * base, base, norm=norm, act=act, transpose=True),
        nn.Conv2d(base, cout, 3, padding=1))


class EncoderDecoder(nn.Module):
    """conv 3×3 → two stride-2 down-samplings → [features, tile(c)] fused by a 1×1 conv → residual blocks → two
    transposed-conv up-samplings → conv 3×3 to ``cout``. The driving signal enters with the image (the papers: tiled
    and concatenated) and again at the bottleneck.

    ``adain`` (default on) also conditions every residual block AdaIN-style (:class:`ResBlock` with ``cond``). Why:
    instance norm removes a spatially constant input, so a tiled signal concatenated before a normalised convolution
    reaches the output only through zero-padding border effects — and the 1×1 bottleneck fuse, followed by instance
    norm, passes none of it. Measured (2026-11-21): at initialisation, switching the signal on changed the CPTNet
    trunk's output by 1.3e-2 (mean, interior) without AdaIN; with random AdaIN weights the interior effect is 10–15×
    that of the older layout (``tests/test_atw.py``). ``adain=False`` is the older layout, kept so weights trained with
    it still load.

    ``coords`` (default off) appends the pixel-centre coordinates (x, y in [−1, 1], :func:`positions`) to the input
    (CoordConv). Why: a convolution is translation-equivariant, so telling the left eye from the right one in a
    centred head crop must come from context or zero-padding border effects; measured on CPTNet (2026-11-21), 680
    fine-tuning steps with left-right mirrored pairs learned to close the eyes but closed both for either eye signal.
    With coordinates alone 235 more steps still closed both; the shipped CPTNet, which closes one, was then also
    trained with the every-pixel cancelled loss (:func:`keyface.core.losses.cancelled_l1`); which of the two was
    necessary is not isolated. The coordinate channels come last; weights without them are upgraded by zero input
    weights for those channels (:func:`keyface.core.training.load_upgraded`), the same function."""

    def __init__(self, cin: int, cout: int, cdim: int, base: int, blocks: int, norm: str, act: str,
                 adain: bool = True, coords: bool = False):
        super().__init__()
        self.coords = coords
        self._positions = None  # the coordinate maps of the last input size (the trunk runs several times per frame)
        self.down = nn.Sequential(
            conv_unit(cin + cdim + (COORDS if coords else 0), base, 3, norm=norm, act=act),
            conv_unit(base, 2 * base, 4, stride=2, norm=norm, act=act),
            conv_unit(2 * base, 4 * base, 4, stride=2, norm=norm, act=act))
        self.fuse = conv_unit(4 * base + cdim, 4 * base, 1, norm=norm, act=act)
        cond = cdim if adain else 0
        self.blocks = nn.Sequential(*[ResBlock(4 * base, norm=norm, act=act, cond=cond) for _ in range(blocks)])
        self.up = up_decoder(base, cout, norm, act)

    def encode(self, x, c):
        """The shared part (CPTNet's mask and grid generators share it): features at 1/4 resolution."""
        parts = [x, tile(c, x.shape[2:])]
        if self.coords:
            p = self._positions
            if p is None or p.shape[2:] != x.shape[2:] or p.device != x.device or p.dtype != x.dtype:
                p = self._positions = positions(x.shape[2], x.device, x.dtype, w=x.shape[3])
            parts.append(p.expand(len(x), -1, -1, -1))
        h = self.down(torch.cat(parts, 1))
        h = self.fuse(torch.cat([h, tile(c, h.shape[2:])], 1))
        for block in self.blocks:
            h = block(h, c)
        return h

    def forward(self, x, c):
        return self.up(self.encode(x, c))


COORDS = 2  # coordinate channels (x, y) of EncoderDecoder(coords=True), appended after the image and the signal


def positions(h: int, device=None, dtype=torch.float32, w: int | None = None) -> torch.Tensor:
    """(1, 2, h, w): pixel-centre coordinates in [−1, 1], channels (x, y) (``w`` defaults to ``h``)."""
    w = h if w is None else w
    ty = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    tx = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    yy, xx = torch.meshgrid(ty, tx, indexing="ij")
    return torch.stack([xx, yy])[None]


def tile(signal: torch.Tensor, size) -> torch.Tensor:
    """(B, D) → (B, D, H, W): the driving vector repeated at every pixel."""
    return signal[:, :, None, None].expand(-1, -1, size[0], size[1])


def identity_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 2, H, W) pixel coordinates (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    return torch.stack([xs, ys])[None]


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp (B, C, H, W) by a backward flow (B, 2, H, W) in pixels (keyface convention)."""
    b, _, h, w = img.shape
    pos = identity_grid(h, w, img.device, flow.dtype) + flow
    gx = (2 * pos[:, 0] + 1) / w - 1
    gy = (2 * pos[:, 1] + 1) / h - 1
    return F.grid_sample(img, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                         align_corners=False)
