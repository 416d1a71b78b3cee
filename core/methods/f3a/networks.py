"""F³A-GAN's networks (seed 002): the 3DMM regressor (§III-A, §III-C-1), the hierarchical conditional framework
(§III-B: image stream T_enc/T_dec, flow stream T_flow, SPADE manipulation at every level, progressive fade-in output)
and the PatchGAN critic. The paper gives no layer table; the choices below are ours and say so.

Images are keyface's network convention (premultiplied RGBA in [−1, 1], :func:`keyface.core.pixels.to_net`).

**Generator** (``F3AConfig``), ``levels`` = 4 at 128² (features at 128, 64, 32, 16 and a bottleneck at 8):

* T_enc: a 3×3 conv at full resolution, then stride-2 4×4 convs doubling the width from ``base`` (capped at 8·base),
  instance norm, LeakyReLU 0.2 — h_enc^l at every level l.
* T_flow: the same layout on the condition map (``cond_channels``: 3 for the facial flow, 20 for action units + Euler
  angles tiled, 1 for a landmark heatmap) — h_flow^l — but **without normalisation**: instance norm divides by each
  channel's spatial spread, so a facial flow of 0.001 gave the same features as one of 0.1 (the condition's
  amplitude was lost, and the generator jumped between a zero condition and a tiny one: measured on our first
  trained model, a 0.002 expression key changed the bias-cancelled crop by 3.5 levels on average), and a tiled
  constant (the action-unit condition) was erased entirely.
* Manipulation (Eq. 4) at every level: h_out^l = h_dec^l · SPADE(h_enc^l; h_flow^l), SPADE = instance norm without
  affine, γ and β predicted from h_flow^l by a 3×3 conv (hidden width = the level's width, at most 64) then two 3×3
  convs (:class:`keyface.core.blocks.SPADE`).
* T_dec: h_dec at the bottleneck = a 3×3 conv of h_enc there; going up, h_dec^{l} = α·Conv(DeConv(h_out^{l+1})) +
  (1 − α)·Conv(Up(h_out^{l+1})) (the paper's fade-in, Up = bilinear), LeakyReLU. The output image is a 3×3 conv +
  tanh of h_out at full resolution. α is a buffer: training ramps it from 0 to 1 (``fade_steps``), after which the
  bilinear path no longer contributes (PGGAN's fade-in, which the paper follows, ends with the new layer alone).
* ``streams = 1`` is the ablation's one-stream T_os: the condition is concatenated to the image at T_enc's input, there
  is no T_flow, and the manipulation is h_dec^l · IN(h_enc^l) with a learned affine instance norm.

**Regressor** (``RegressorConfig``): five stride-2 conv units (4×4, instance norm, LeakyReLU) from the crop to 4×4,
two linear layers → (α_id, α_exp, pitch/yaw/roll, tx, ty, s). Outputs are scaled so that a zero output is the mean
face at rest: angles = 30°·o, s = 1 + 0.25·o.

**Critic**: PatchGAN (StarGAN's trunk, :func:`keyface.core.blocks.patch_trunk`, 3 stride-2 layers), one score per
patch (unconditional, as Eq. 11's D(Î_t)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...blocks import SPADE, PatchCritic
from ...weights import load_weights
from . import geometry as geo

CONDITIONS = {"flow": 3, "aus": 20, "landmarks": 1}


def _unit(cin, cout, k=3, stride=1, norm=True):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=(k - stride + 1) // 2),
                         nn.InstanceNorm2d(cout, affine=True) if norm else nn.Identity(),
                         nn.LeakyReLU(0.2, inplace=True))


@dataclass
class F3AConfig:
    size: int = 128
    base: int = 16
    levels: int = 4
    condition: str = "flow"
    streams: int = 2

    @property
    def cond_channels(self) -> int:
        return CONDITIONS[self.condition]

    def widths(self) -> list[int]:
        return [min(self.base * 2 ** i, 8 * self.base) for i in range(self.levels + 1)]

    def to_dict(self) -> dict:
        return asdict(self)


class Stream(nn.Module):
    """T_enc / T_flow: features at every level, full resolution first. ``norm=False`` for T_flow (see the module
    docstring: instance norm would erase the condition's amplitude)."""

    def __init__(self, cin: int, widths: list[int], norm: bool = True):
        super().__init__()
        self.stem = _unit(cin, widths[0], norm=norm)
        self.down = nn.ModuleList(_unit(widths[i], widths[i + 1], 4, 2, norm=norm) for i in range(len(widths) - 1))

    def forward(self, x) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for d in self.down:
            feats.append(d(feats[-1]))
        return feats


class F3AGenerator(nn.Module):
    def __init__(self, cfg: F3AConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths()
        two = cfg.streams == 2
        self.enc = Stream(4 + (0 if two else cfg.cond_channels), w)
        self.flow = Stream(cfg.cond_channels, w, norm=False) if two else None
        if two:
            self.manip = nn.ModuleList(SPADE(c, c, hidden=min(c, 64)) for c in w)
        else:
            self.manip = nn.ModuleList(nn.InstanceNorm2d(c, affine=True) for c in w)
        self.bottleneck = nn.Sequential(nn.Conv2d(w[-1], w[-1], 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.deconv = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 4, 2, 1) for i in range(cfg.levels))
        self.conv_a = nn.ModuleList(nn.Conv2d(w[i], w[i], 3, padding=1) for i in range(cfg.levels))
        self.conv_b = nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 3, padding=1) for i in range(cfg.levels))
        self.to_image = nn.Conv2d(w[0], 4, 3, padding=1)
        self.register_buffer("alpha", torch.ones(()))

    def forward(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        two = self.flow is not None
        h_enc = self.enc(image if two else torch.cat([image, cond], 1))
        h_flow = self.flow(cond) if two else None

        def manipulate(level, h_dec):
            m = self.manip[level]
            return h_dec * (m(h_enc[level], h_flow[level]) if two else m(h_enc[level]))

        h = manipulate(self.cfg.levels, self.bottleneck(h_enc[-1]))
        a = self.alpha
        for lv in reversed(range(self.cfg.levels)):
            via_deconv = self.conv_a[lv](self.deconv[lv](h))
            via_up = self.conv_b[lv](F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
            h_dec = F.leaky_relu(a * via_deconv + (1 - a) * via_up, 0.2)
            h = manipulate(lv, h_dec)
        return torch.tanh(self.to_image(h))


@dataclass
class RegressorConfig:
    size: int = 128
    base: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


class Regressor(nn.Module):
    """Crop → (B, N_PARAMS) 3DMM parameters in the schema's order (tz = 0)."""

    def __init__(self, cfg: RegressorConfig):
        super().__init__()
        self.cfg = cfg
        w = [4] + [min(cfg.base * 2 ** i, 128) for i in range(5)]
        self.trunk = nn.Sequential(*[_unit(w[i], w[i + 1], 4, 2) for i in range(5)])
        side = cfg.size // 32
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(w[-1] * side * side, 256), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Linear(256, geo.K + geo.L + 6))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        o = self.head(self.trunk(image))
        k, l_ = geo.K, geo.L
        zero = o.new_zeros(len(o), 1)
        return torch.cat([o[:, :k + l_], 30.0 * o[:, k + l_:k + l_ + 3], o[:, k + l_ + 3:k + l_ + 5], zero,
                          1.0 + 0.25 * o[:, -1:]], 1)


Critic = PatchCritic  # Eq. 11's D: unconditional, one score per patch


def load_generator(path, device="cpu") -> F3AGenerator:
    return load_weights(path, lambda m: F3AGenerator(F3AConfig(**m)), "f3a", device)


def load_regressor(path, device="cpu") -> Regressor:
    return load_weights(path, lambda m: Regressor(RegressorConfig(**m)), "f3a-regressor", device)
