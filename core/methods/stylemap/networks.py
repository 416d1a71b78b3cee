"""Style mapping's networks (seed 003, Tables 1–4; the face-vid2vid design it follows): keypoint extractor, pose–
expression network, warping network and intermediate generator, at widths reduced for CPU training.

Images are keyface's network convention (premultiplied RGBA in [−1, 1], 4 channels where the paper has RGB).
Keypoints live in the feature volume's normalised coordinates (x, y, z) ∈ [−1, 1]³, x to the right, y down, z toward
the viewer (the depth axis of the volume).

**Keypoint extractor** (Table 1): anti-aliased down-sampling (Gaussian blur, then every other pixel: 128² → 64²), five
2D down blocks (64² → 2², widths 16 … 256: the paper's ÷ 4), a 1×1 convolution to ``kp_depth`` × 64 channels
reshaped into a 3D volume, then 3D up blocks that double height and width only — four of them (2² → 32²) where the
paper has five (2² → 64²): the final volume is 32² × ``kp_depth`` (8), one heat map per keypoint by a 3×3×3
convolution, soft-argmax over the volume → K = 15 canonical keypoints c_k.

**Pose–expression network** (Table 2, Hopenet's head): a 7×7 stride-2 convolution, max pooling, four stages of residual
bottleneck blocks (widths 32 … 256: the paper's ÷ 8) with stride-2 between stages, global pooling, linear heads: yaw,
pitch and roll as 66 bins of 3° (±99°; the angle is the softmax expectation of the bins' centres), translation
(3), expression deltas (K × 3). Rotation R = R_roll · R_pitch · R_yaw (yaw about y, pitch about x, roll about z). The
final keypoints are x_k = R·c_k + t + δ_k.

**Appearance features and warping** (Tables 3–4): the source image → a 3×3 convolution, two 2D down blocks (128² → 32²),
a 1×1 convolution to ``volume_channels`` × ``depth`` channels reshaped to the feature volume F_s (8 × 8 × 32² where
the paper has 32 × 16 × 64²), six 3D residual blocks. For every keypoint the first-order warp (Eq. 1) maps a driving
location p̄ to R_s·R_d⁻¹·(p̄ − x_d,k) + x_s,k in the source volume (plus the identity warp for the background); the K + 1
warped volumes, each compressed to 4 channels by a 1×1×1 convolution, and the differences of Gaussian heat maps of the
driving and source keypoints go through a 3D hourglass; a 3×3×3 convolution (the paper: 7×7×7, ÷ 12.7 in cost) gives
the K + 1 composition maps (softmax per location, Eq. 2), and a 7×7 2D convolution over the flattened volume the
occlusion mask o. The composed motion samples F_s once.

**Intermediate generator** (Table 4): the warped volume flattened to 2D (C·D channels), a 3×3 convolution, × o, six 2D
residual blocks, two up-samplings (32² → 128²) and a 3×3 convolution to the image (tanh).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...blocks import ResBlock

BINS = 66
BIN_DEG = 3.0
ANGLE_RANGE = BINS * BIN_DEG / 2  # ±99°


@dataclass
class StyleMapConfig:
    size: int = 128
    keypoints: int = 15
    kp_depth: int = 8
    depth: int = 8
    volume_channels: int = 8
    base: int = 16
    hourglass: int = 32
    blocks3d: int = 6
    blocks2d: int = 6

    def to_dict(self) -> dict:
        return asdict(self)


def _conv2d(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _conv3d(cin, cout, k=3):
    return nn.Sequential(nn.Conv3d(cin, cout, k, padding=k // 2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class AntiAliasDown(nn.Module):
    """Gaussian blur (σ = (1/scale − 1)/2, FOMM's choice) then every ``1/scale``-th pixel."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        k = 2 * round(sigma * 4) + 1
        ax = torch.arange(k, dtype=torch.float32) - k // 2
        g = torch.exp(-ax ** 2 / (2 * sigma ** 2))
        g = (g[:, None] * g[None]) / g.sum() ** 2
        self.register_buffer("kernel", g.expand(channels, 1, k, k).contiguous())
        self.step = int(round(1 / scale))
        self.pad = k // 2
        self.channels = channels

    def forward(self, x):
        x = F.conv2d(F.pad(x, [self.pad] * 4, mode="reflect"), self.kernel, groups=self.channels)
        return x[:, :, ::self.step, ::self.step]


class Down2d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = _conv2d(cin, cout)

    def forward(self, x):
        return F.avg_pool2d(self.conv(x), 2)


class Up3d(nn.Module):
    """Doubles height and width (not depth), then conv-BN-ReLU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = _conv3d(cin, cout)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))


class ResBlock3d(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm3d(c), nn.ReLU(inplace=True), nn.Conv3d(c, c, 3, padding=1),
                                  nn.BatchNorm3d(c), nn.ReLU(inplace=True), nn.Conv3d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def grid3d(d: int, h: int, w: int, device=None) -> torch.Tensor:
    """(d, h, w, 3) voxel-centre coordinates (x, y, z) in [−1, 1] (``align_corners=False`` convention)."""
    def axis(n):
        return (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], -1)


def soft_argmax(heat: torch.Tensor) -> torch.Tensor:
    """(B, K, D, H, W) logits → (B, K, 3) expected (x, y, z) under the softmax over the volume."""
    b, k, d, h, w = heat.shape
    p = F.softmax(heat.flatten(2), -1).view(b, k, d, h, w, 1)
    return (p * grid3d(d, h, w, heat.device)[None, None]).sum((2, 3, 4))


class KeypointExtractor(nn.Module):
    def __init__(self, cfg: StyleMapConfig):
        super().__init__()
        self.cfg = cfg
        self.down = AntiAliasDown(4, 0.5)
        w = [4] + [min(cfg.base * 2 ** i, 256) for i in range(5)]
        self.enc = nn.Sequential(*[Down2d(w[i], w[i + 1]) for i in range(5)])
        self.c3 = 64
        self.to_volume = nn.Conv2d(w[-1], self.c3 * cfg.kp_depth, 1)
        c = [64, 32, 16, 16, 8]
        self.dec = nn.Sequential(*[Up3d(c[i], c[i + 1]) for i in range(4)])
        self.heat = nn.Conv3d(c[-1], cfg.keypoints, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.to_volume(self.enc(self.down(image)))
        b, _, hh, ww = h.shape
        h = self.dec(h.view(b, self.c3, self.cfg.kp_depth, hh, ww))
        return soft_argmax(self.heat(h))


class Bottleneck(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        mid = cout // 4
        self.body = nn.Sequential(nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                                  nn.Conv2d(mid, mid, 3, stride, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                                  nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


def rotation(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B,) angles in degrees → (B, 3, 3) R = R_roll · R_pitch · R_yaw (x right, y down, z toward the viewer)."""
    y, p, r = (torch.deg2rad(a) for a in (yaw, pitch, roll))
    one, zero = torch.ones_like(y), torch.zeros_like(y)

    def mat(rows):
        return torch.stack([torch.stack(row, -1) for row in rows], -2)

    ry = mat([[torch.cos(y), zero, torch.sin(y)], [zero, one, zero], [-torch.sin(y), zero, torch.cos(y)]])
    rp = mat([[one, zero, zero], [zero, torch.cos(p), -torch.sin(p)], [zero, torch.sin(p), torch.cos(p)]])
    rr = mat([[torch.cos(r), -torch.sin(r), zero], [torch.sin(r), torch.cos(r), zero], [zero, zero, one]])
    return rr @ rp @ ry


def bin_angles(logits: torch.Tensor) -> torch.Tensor:
    """(B, 66) bin logits → (B,) degrees: the softmax expectation of the bin centres (Hopenet)."""
    centres = (torch.arange(BINS, device=logits.device, dtype=logits.dtype) + 0.5) * BIN_DEG - ANGLE_RANGE
    return (F.softmax(logits, -1) * centres).sum(-1)


class PoseExpressionNet(nn.Module):
    def __init__(self, cfg: StyleMapConfig):
        super().__init__()
        self.cfg = cfg
        w = [32, 64, 128, 256]
        self.stem = nn.Sequential(nn.Conv2d(4, 16, 7, 2, 3), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages, c = [], 16
        for i, width in enumerate(w):
            stages += [Bottleneck(c, width, 1 if i == 0 else 2), Bottleneck(width, width)]
            c = width
        self.trunk = nn.Sequential(*stages)
        self.yaw, self.pitch, self.roll = (nn.Linear(c, BINS) for _ in range(3))
        self.translation = nn.Linear(c, 3)
        self.expression = nn.Linear(c, cfg.keypoints * 3)
        for head in (self.translation, self.expression):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, image: torch.Tensor) -> dict:
        h = self.trunk(self.stem(image)).mean((2, 3))
        logits = {a: getattr(self, a)(h) for a in ("yaw", "pitch", "roll")}
        angles = {a: bin_angles(v) for a, v in logits.items()}
        return {"logits": logits, "angles": angles, "t": self.translation(h),
                "delta": self.expression(h).view(-1, self.cfg.keypoints, 3)}


def keypoints(canonical: torch.Tensor, pose: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """x_k = R·c_k + t + δ_k → ((B, K, 3), R (B, 3, 3))."""
    a = pose["angles"]
    r = rotation(a["yaw"], a["pitch"], a["roll"])
    return canonical @ r.transpose(1, 2) + pose["t"][:, None] + pose["delta"], r


def gaussian_volume(kp: torch.Tensor, shape, sigma: float = 0.1) -> torch.Tensor:
    """(B, K, 3) keypoints → (B, K, D, H, W) Gaussian heat maps."""
    g = grid3d(*shape, kp.device)[None, None]
    return torch.exp(-((g - kp[:, :, None, None, None]) ** 2).sum(-1) / (2 * sigma ** 2))


class Hourglass3d(nn.Module):
    def __init__(self, cin: int, width: int, levels: int = 3):
        super().__init__()
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        c = cin
        for i in range(levels):
            self.down.append(_conv3d(c, width * 2 ** i))
            c = width * 2 ** i
        for i in reversed(range(levels)):
            out = cin if i == 0 else width * 2 ** (i - 1)
            self.up.append(_conv3d(c, out))
            c = 2 * out
        self.out_channels = c

    def forward(self, x):
        skips = [x]
        for d in self.down:
            x = F.avg_pool3d(d(x), (1, 2, 2))
            skips.append(x)
        skips.pop()
        for u in self.up:
            x = u(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))
            x = torch.cat([x, skips.pop()], 1)
        return x


class WarpingNetwork(nn.Module):
    def __init__(self, cfg: StyleMapConfig):
        super().__init__()
        k1 = cfg.keypoints + 1
        self.compress = nn.Sequential(nn.Conv3d(cfg.volume_channels, 4, 1), nn.BatchNorm3d(4))
        self.hourglass = Hourglass3d(k1 * 4 + k1, cfg.hourglass)
        c = self.hourglass.out_channels
        self.masks = nn.Conv3d(c, k1, 3, padding=1)
        self.occlusion = nn.Conv2d(c * cfg.depth, 1, 7, padding=3)

    def forward(self, volume, kp_s, kp_d, r_s, r_d) -> dict:
        b, c, d, h, w = volume.shape
        grid = grid3d(d, h, w, volume.device)  # driving locations p̄ (d, h, w, 3)
        # Eq. (1): p̄ ↦ R_s R_d⁻¹ (p̄ − x_d,k) + x_s,k for every keypoint, and the identity (background) first
        rel = r_s @ r_d.transpose(1, 2)  # (B, 3, 3)
        moved = torch.einsum("bij,bkdhwj->bkdhwi", rel, grid[None, None] - kp_d[:, :, None, None, None])
        moved = moved + kp_s[:, :, None, None, None]
        coords = torch.cat([grid[None, None].expand(b, 1, d, h, w, 3), moved], 1)  # (B, K+1, D, H, W, 3)
        k1 = coords.shape[1]
        src = volume[:, None].expand(b, k1, c, d, h, w).reshape(b * k1, c, d, h, w)
        warped = F.grid_sample(src, coords.reshape(b * k1, d, h, w, 3), align_corners=False, padding_mode="border")
        small = self.compress(warped).view(b, k1 * 4, d, h, w)
        heat = gaussian_volume(kp_d, (d, h, w)) - gaussian_volume(kp_s, (d, h, w))
        heat = torch.cat([heat.new_zeros(b, 1, d, h, w), heat], 1)
        feats = self.hourglass(torch.cat([small, heat], 1))
        masks = F.softmax(self.masks(feats), 1)  # Eq. (2)
        motion = (masks[..., None] * coords).sum(1)  # (B, D, H, W, 3)
        occlusion = torch.sigmoid(self.occlusion(feats.flatten(1, 2)))
        return {"motion": motion, "masks": masks, "occlusion": occlusion}


class StyleMapGenerator(nn.Module):
    """Source image + driving keypoints → image, the motion field and the occlusion mask (Tables 3–4)."""

    def __init__(self, cfg: StyleMapConfig):
        super().__init__()
        self.cfg = cfg
        b = cfg.base
        self.encode = nn.Sequential(_conv2d(4, b), Down2d(b, 2 * b), Down2d(2 * b, 4 * b))
        self.to_volume = nn.Conv2d(4 * b, cfg.volume_channels * cfg.depth, 1)
        self.blocks3d = nn.Sequential(*[ResBlock3d(cfg.volume_channels) for _ in range(cfg.blocks3d)])
        self.warping = WarpingNetwork(cfg)
        c2 = cfg.volume_channels * cfg.depth
        self.from_volume = _conv2d(c2, 4 * b)
        self.blocks2d = nn.Sequential(*[ResBlock(4 * b, norm="batch") for _ in range(cfg.blocks2d)])
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), _conv2d(4 * b, 2 * b),
                                nn.Upsample(scale_factor=2), _conv2d(2 * b, b))
        self.to_image = nn.Conv2d(b, 4, 3, padding=1)

    def volume(self, image):
        h = self.to_volume(self.encode(image))
        bsz, _, hh, ww = h.shape
        return self.blocks3d(h.view(bsz, self.cfg.volume_channels, self.cfg.depth, hh, ww))

    def forward(self, image, kp_s, kp_d, r_s, r_d) -> dict:
        vol = self.volume(image)
        warp = self.warping(vol, kp_s, kp_d, r_s, r_d)
        warped = F.grid_sample(vol, warp["motion"], align_corners=False, padding_mode="border")
        h = self.from_volume(warped.flatten(1, 2)) * warp["occlusion"]
        out = torch.tanh(self.to_image(self.up(self.blocks2d(h))))
        return {"out": out, **warp}


def flow_2d(motion: torch.Tensor, size: int) -> torch.Tensor:
    """The composed 3D motion (B, D, H, W, 3) → a 2D backward flow (B, 2, size, size) in output pixels (ResWarp's
    flow): the depth-averaged (x, y) displacement from each location, up-sampled to the output size (the displacement,
    not the positions, so that no motion is exactly no flow at the borders too)."""
    b, d, h, w, _ = motion.shape
    ident = grid3d(d, h, w, motion.device)[None]
    disp = (motion - ident)[..., :2].mean(1).permute(0, 3, 1, 2)  # (B, 2, H, W), normalised units
    disp = F.interpolate(disp, size=(size, size), mode="bilinear", align_corners=False)
    return disp * (size / 2)


class StyleMap(nn.Module):
    """The whole model, saved as one file: keypoint extractor, pose–expression network and generator, plus the head's
    rotation pivot in the volume's coordinates (a buffer estimated from the engine's poses by the trainer, used by the
    runtime to turn the head about its neck rather than about the crop's centre)."""

    def __init__(self, cfg: StyleMapConfig):
        super().__init__()
        self.cfg = cfg
        self.kp = KeypointExtractor(cfg)
        self.pose = PoseExpressionNet(cfg)
        self.gen = StyleMapGenerator(cfg)
        self.register_buffer("pivot", torch.zeros(3))

    def detect(self, image: torch.Tensor) -> dict:
        """Canonical keypoints c, the pose (angles, t, δ) and the final keypoints x with R of images."""
        c = self.kp(image)
        pose = self.pose(image)
        x, r = keypoints(c, pose)
        return {"c": c, **pose, "x": x, "R": r}

    def forward(self, image, kp_s, kp_d, r_s, r_d) -> dict:
        return self.gen(image, kp_s, kp_d, r_s, r_d)


def load_model(path, device="cpu") -> StyleMap:
    from ...weights import load_weights

    return load_weights(path, lambda m: StyleMap(StyleMapConfig(**m)), "stylemap", device)


__all__ = ["ANGLE_RANGE", "BINS", "KeypointExtractor", "PoseExpressionNet", "StyleMap", "StyleMapConfig",
           "StyleMapGenerator", "bin_angles", "flow_2d", "keypoints", "load_model", "rotation"]
