"""Distilling a THA4 teacher into a character-specific student (seed 001 §5.2, App. D; ``keyface distill``).

Students (trainable modules with the official parameter names, so their state dicts are official-format):
:class:`SirenFaceMorpher` (2 + 39 → 8 sine layers of 128 → RGBA, 128² face patch) and :class:`SirenBodyMorpher`
(levels at size/4, size/2, size with sine layers 360-360-180, 180-180-90, 90-90-90 and a linear layer to 7 channels:
grid change, alpha, colour change). SIREN initialisation (Sitzmann et al.): first layer U(−1/n, 1/n), later layers
U(−√(6/n)/ω0, √(6/n)/ω0), ω0 = 30.

Losses and schedules (the paper; example counts scale with ``examples`` — the paper's 1M face / 1.5M body examples
take hours on four V100s, a CPU run is a small fraction):

* face: L1(S, T) + λ_fm·L1(M ⊙ (S − T)), λ_fm = 20, M the character's movable-parts mask (App. D) in the face crop;
  Adam β (0.9, 0.999), batch 8, lr 1e-4 → 3.33e-5 → 1e-5 → 3.33e-6 after 20 %, 50 %, 80 % of the examples.
* body: λ_flow·L1(flow) + λ_warped·L1(warped) + λ_direct·L1(direct) + λ_final·L1(final) with Table 3's phases
  (≤ 400K: 0.5, 0.25, 2, 0.25; ≤ 800K: 5, 2.5, 1, 1; ≤ 1.5M: 1, 1, 1, 10 — as fractions 4/15, 8/15, 1 of the
  examples); lr 1e-4 → 3e-5 → 1e-5 → 3e-6 after 2/15, 6/15, 13/15 of the examples.

Poses are sampled like the full system's training poses (our choice, as the paper's dataset is not available): the
synthetic engine's pose sampler (:func:`keyface.core.synth.sample.sample_pose`) converted to ``tha45``.

The student body morpher warps the teacher's face-morphed image during training (the image the teacher's body
rotator warps), as it warps the student-face-pasted image at inference.

A teacher is any callable ``teacher(image (1, 4, S, S) official convention, pose (B, 45)) → dict`` with ``face``
(B, 4, 128·S/512, ·) and ``grid_change``, ``alpha``, ``color_change``, ``warped_image``, ``image`` at S² and the
``face_image`` it warped — e.g. an official student (:class:`~keyface.core.methods.tha4.student.Student`) or a
keyface teacher. A teacher with ``morph_face(image, pose) → face`` (keyface's) runs only that for the face student.
A teacher with ``full_input = True`` (THA3's, :mod:`keyface.core.methods.tha3.teacher`) is given the 512² character
whatever its ``size`` (it poses at 512² and scales its outputs down to ``size``), while the students learn at ``size``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...blocks import positions
from ...box import Box
from ...errors import KeyfaceError
from ...io import atomic_write_text
from .convention import psnr_official
from .student import FACE_BOX, FACE_PARAMS, OMEGA, POSE_DIM

FACE_WIDTH, FACE_LAYERS = 128, 8
BODY_WIDTHS = ((360, 360, 180), (180, 180, 90), (90, 90, 90))
BODY_PHASES = ((4 / 15, dict(flow=0.5, warped=0.25, direct=2.0, final=0.25)),
               (8 / 15, dict(flow=5.0, warped=2.5, direct=1.0, final=1.0)),
               (1.0, dict(flow=1.0, warped=1.0, direct=1.0, final=10.0)))
FACE_LR = ((0.2, 1e-4), (0.5, 1e-4 / 3), (0.8, 1e-5), (1.0, 1e-5 / 3))
BODY_LR = ((2 / 15, 1e-4), (6 / 15, 3e-5), (13 / 15, 1e-5), (1.0, 3e-6))
LAMBDA_FM = 20.0


class SineLayer(nn.Module):
    def __init__(self, cin: int, cout: int, first: bool = False):
        super().__init__()
        self.linear = nn.Conv2d(cin, cout, 1)  # 1×1 convolution, as the official files store it
        bound = 1 / cin if first else math.sqrt(6 / cin) / OMEGA
        nn.init.uniform_(self.linear.weight, -bound, bound)

    def forward(self, x):
        return torch.sin(OMEGA * self.linear(x))


class _Siren(nn.Module):
    def __init__(self, cin: int, widths, first: bool):
        super().__init__()
        self.sine_layers = nn.ModuleList()
        for i, w in enumerate(widths):
            self.sine_layers.append(SineLayer(cin, w, first=first and i == 0))
            cin = w


class SirenFaceMorpher(nn.Module):
    """Keys ``siren.sine_layers.i.linear.*``, ``siren.last_linear.*`` (official)."""

    def __init__(self, size: int = 128):
        super().__init__()
        self.size = size
        self.siren = _Siren(2 + FACE_PARAMS, [FACE_WIDTH] * FACE_LAYERS, first=True)
        self.siren.last_linear = nn.Conv2d(FACE_WIDTH, 4, 1)

    def forward(self, pose):
        n = self.size
        x = torch.cat([positions(n, pose.device).expand(len(pose), -1, -1, -1),
                       pose[:, :FACE_PARAMS, None, None].expand(-1, -1, n, n)], 1)
        for layer in self.siren.sine_layers:
            x = layer(x)
        return self.siren.last_linear(x)


class SirenBodyMorpher(nn.Module):
    """Keys ``siren_layers.l.j.linear.*``, ``last_linear.*`` (official); output 7 channels at ``size``²."""

    def __init__(self, size: int = 512):
        super().__init__()
        self.size = size
        self.siren_layers = nn.ModuleList()
        prev = 0
        for level, widths in enumerate(BODY_WIDTHS):
            layers, cin = nn.ModuleList(), prev + 2 + POSE_DIM
            for j, w in enumerate(widths):
                layers.append(SineLayer(cin, w, first=level == 0 and j == 0))
                cin = w
            self.siren_layers.append(layers)
            prev = widths[-1]
        self.last_linear = nn.Conv2d(prev, 7, 1)

    def forward(self, pose):
        feats = None
        for level, layers in enumerate(self.siren_layers):
            n = self.size >> (len(BODY_WIDTHS) - 1 - level)
            parts = [] if feats is None else [F.interpolate(feats, size=(n, n), mode="bilinear", align_corners=False)]
            x = torch.cat(parts + [positions(n, pose.device).expand(len(pose), -1, -1, -1),
                                   pose[:, :, None, None].expand(-1, -1, n, n)], 1)
            for layer in layers:
                x = layer(x)
            feats = x
        return self.last_linear(feats)


def face_box(size: int) -> tuple[slice, slice]:
    """The face crop's (rows, columns) slices for a ``size``² character (512²: :data:`.student.FACE_BOX`, rows
    80–207, columns 192–319)."""
    return Box(*(int(v * size / 512) for v in FACE_BOX)).slices


def body_formation(out7: torch.Tensor, image: torch.Tensor) -> dict:
    grid_change, alpha, color = out7[:, 0:2], out7[:, 2:3], out7[:, 3:7]
    n = image.shape[-1]
    grid = (positions(n, image.device, image.dtype) + grid_change).permute(0, 2, 3, 1)
    warped = F.grid_sample(image.expand(len(out7), -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    return {"grid_change": grid_change, "alpha": alpha, "color_change": color, "warped_image": warped,
            "image": (1 - alpha) * warped + alpha * color}


def student_image(face: SirenFaceMorpher, body: SirenBodyMorpher, image: torch.Tensor, pose: torch.Tensor):
    """The trainable students' final image (B, 4, S, S) for ``image`` (1, 4, S, S) at their own size: the face patch
    pasted, then the body morpher's warp and blend."""
    rows, cols = face_box(image.shape[-1])
    img = image.expand(len(pose), -1, -1, -1).clone()
    img[:, :, rows, cols] = face(pose)
    return body_formation(body(pose), img)["image"]


def load_students(folder, size: int) -> tuple[SirenFaceMorpher, SirenBodyMorpher]:
    """A distilled character model's two students as trainable modules at ``size`` (their distillation size)."""
    from pathlib import Path

    from safetensors.torch import load_file

    face, body = SirenFaceMorpher(size // 4), SirenBodyMorpher(size)
    face.load_state_dict(load_file(str(Path(folder) / "face_morpher.safetensors")))
    body.load_state_dict(load_file(str(Path(folder) / "body_morpher.safetensors")))
    return face, body


def sample_tha45(rng: np.random.Generator, n: int) -> np.ndarray:
    """Poses like the full system's training poses: the synthetic engine's sampler, in tha45."""
    from ...rig import convert
    from ...synth.sample import character_vector, sample_pose

    vecs = np.stack([character_vector(sample_pose(rng)) for _ in range(n)])
    return convert(vecs, "character", "tha45").astype(np.float32)


def _lr(schedule, t: float) -> float:
    for upto, lr in schedule:
        if t < upto:
            return lr
    return schedule[-1][1]


def _phase(t: float) -> dict:
    for upto, weights in BODY_PHASES:
        if t < upto:
            return weights
    return BODY_PHASES[-1][1]


@dataclass
class DistillConfig:
    face_examples: int = 1_000_000
    body_examples: int = 1_500_000
    batch: int = 8
    size: int = 512
    seed: int = 0
    checkpoint_minutes: float = 5.0
    eval_poses: int = 1000


class Distiller:
    """Trains both students for one character; ``out`` holds checkpoints (resumable) and, at the end, the character
    model (``face_morpher.safetensors``, ``body_morpher.safetensors``, ``character.png``, ``character_model.yaml``,
    ``distill.json``)."""

    def __init__(self, teacher, image: torch.Tensor, face_mask: torch.Tensor | None, out, cfg: DistillConfig,
                 device="cpu", log=print, teacher_image: torch.Tensor | None = None):
        self.teacher, self.cfg, self.log = teacher, cfg, log
        self.out = Path(out)
        self.device = torch.device(device)
        self.image = image.to(self.device)  # at the students' size
        self.teacher_image = self.image if teacher_image is None else teacher_image.to(self.device)
        torch.manual_seed(cfg.seed)
        self.face = SirenFaceMorpher(cfg.size // 4).to(self.device)
        self.body = SirenBodyMorpher(cfg.size).to(self.device)
        self.opt_face = torch.optim.Adam(self.face.parameters(), 1e-4, betas=(0.9, 0.999))
        self.opt_body = torch.optim.Adam(self.body.parameters(), 1e-4, betas=(0.9, 0.999))
        n = cfg.size // 4
        self.mask = (torch.ones(1, 1, n, n) if face_mask is None else face_mask).to(self.device)
        self.face_seen = self.body_seen = 0
        self.out.mkdir(parents=True, exist_ok=True)
        if (self.out / "distill_state.json").exists():
            self._load()

    # checkpoints -----------------------------------------------------------------------------------------------------
    def save(self) -> None:
        tmp = self.out / ".distill_ckpt.pt.tmp"
        torch.save({"face": self.face.state_dict(), "body": self.body.state_dict(),
                    "opt_face": self.opt_face.state_dict(), "opt_body": self.opt_body.state_dict()}, tmp)
        tmp.replace(self.out / "distill_ckpt.pt")
        atomic_write_text(self.out / "distill_state.json", json.dumps(
            {"face_seen": self.face_seen, "body_seen": self.body_seen, "config": asdict(self.cfg)}))

    def _load(self) -> None:
        state = json.loads((self.out / "distill_state.json").read_text(encoding="utf-8"))
        was = state.get("config", {})
        if (was.get("size"), was.get("batch")) != (self.cfg.size, self.cfg.batch):
            raise KeyfaceError(f"{self.out} holds a distillation at {was.get('size')}², batch {was.get('batch')}; "
                               f"this one is at {self.cfg.size}², batch {self.cfg.batch}: use another --out or the "
                               "same settings")
        ck = torch.load(self.out / "distill_ckpt.pt", map_location=self.device, weights_only=True)
        self.face.load_state_dict(ck["face"])
        self.body.load_state_dict(ck["body"])
        self.opt_face.load_state_dict(ck["opt_face"])
        self.opt_body.load_state_dict(ck["opt_body"])
        self.face_seen, self.body_seen = state["face_seen"], state["body_seen"]
        self.log(f"resumed: face {self.face_seen} / body {self.body_seen} examples seen")

    # steps ------------------------------------------------------------------------------------------------------------
    def _poses(self, k: int) -> torch.Tensor:
        return torch.from_numpy(sample_tha45(np.random.default_rng([self.cfg.seed, k]), self.cfg.batch)).to(
            self.device)

    def face_step(self) -> dict:
        t = self.face_seen / self.cfg.face_examples
        for g in self.opt_face.param_groups:
            g["lr"] = _lr(FACE_LR, t)
        pose = self._poses(2 * (self.face_seen // self.cfg.batch))
        with torch.no_grad():
            morph_face = getattr(self.teacher, "morph_face", None)  # the face stage alone, when the teacher has one
            target = (morph_face(self.teacher_image, pose) if morph_face
                      else self.teacher(self.teacher_image, pose)["face"])
        s = self.face(pose)
        diff = s - target
        loss = diff.abs().mean() + LAMBDA_FM * (self.mask * diff).abs().mean()
        self.opt_face.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_face.step()
        self.face_seen += self.cfg.batch
        return {"face_loss": float(loss.detach())}

    def body_step(self) -> dict:
        t = self.body_seen / self.cfg.body_examples
        for g in self.opt_body.param_groups:
            g["lr"] = _lr(BODY_LR, t)
        lam = _phase(t)
        pose = self._poses(2 * (self.body_seen // self.cfg.batch) + 1)
        with torch.no_grad():
            tea = self.teacher(self.teacher_image, pose)
        stu = body_formation(self.body(pose), tea["face_image"])
        terms = {"flow": (stu["grid_change"] - tea["grid_change"]).abs().mean(),
                 "warped": (stu["warped_image"] - tea["warped_image"]).abs().mean(),
                 "direct": (stu["color_change"] - tea["color_change"]).abs().mean(),
                 "final": (stu["image"] - tea["image"]).abs().mean()}
        loss = sum(lam[k] * v for k, v in terms.items())
        self.opt_body.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_body.step()
        self.body_seen += self.cfg.batch
        return {"body_loss": float(loss.detach()), **{f"body_{k}": float(v.detach()) for k, v in terms.items()}}

    # the whole job ----------------------------------------------------------------------------------------------------
    def run(self, progress=None, should_stop=lambda: False) -> dict | None:
        cfg = self.cfg
        last = time.monotonic()
        started = time.monotonic()
        with (self.out / "distill_log.jsonl").open("a", encoding="utf-8") as log:
            while (self.face_seen < cfg.face_examples or self.body_seen < cfg.body_examples) and not should_stop():
                logs = {}
                if self.face_seen < cfg.face_examples:
                    logs.update(self.face_step())
                if self.body_seen < cfg.body_examples:
                    logs.update(self.body_step())
                if not all(math.isfinite(v) for v in logs.values()):
                    self.save()
                    raise KeyfaceError("distillation diverged (non-finite loss); the last checkpoint is kept")
                log.write(json.dumps({"face_seen": self.face_seen, "body_seen": self.body_seen, **logs}) + "\n")
                if progress:
                    progress(self.face_seen + self.body_seen, logs)
                if time.monotonic() - last > 60 * cfg.checkpoint_minutes:
                    self.save()
                    last = time.monotonic()
        self.save()
        if self.face_seen < cfg.face_examples or self.body_seen < cfg.body_examples:
            return None
        return self.finish(time.monotonic() - started)

    @torch.no_grad()
    def evaluate(self, n: int) -> dict:
        """Student vs teacher PSNR (official convention) on ``n`` fixed poses (the paper: 1,000)."""
        rng = np.random.default_rng([self.cfg.seed, 0xE7A1])
        poses = torch.from_numpy(sample_tha45(rng, n)).to(self.device)
        values = []
        for i in range(0, n, self.cfg.batch):
            p = poses[i:i + self.cfg.batch]
            stu = student_image(self.face, self.body, self.image, p)
            tea = self.teacher(self.teacher_image, p)["image"]
            values += [psnr_official(a, b) for a, b in zip(stu, tea, strict=True)]
        return {"poses": n, "psnr_mean": float(np.mean(values)), "psnr_min": float(np.min(values))}

    def finish(self, seconds: float) -> dict:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.face.state_dict().items()},
                  str(self.out / "face_morpher.safetensors"))
        save_file({k: v.contiguous() for k, v in self.body.state_dict().items()},
                  str(self.out / "body_morpher.safetensors"))
        atomic_write_text(self.out / "character_model.yaml", "character_image_file_name: character.png\n"
                          "face_morpher_file_name: face_morpher.safetensors\n"
                          "body_morpher_file_name: body_morpher.safetensors\n")
        record = {"config": asdict(self.cfg), "face_examples": self.face_seen, "body_examples": self.body_seen,
                  "train_seconds_last_process": round(seconds, 1),
                  "student_vs_teacher": self.evaluate(self.cfg.eval_poses)}
        atomic_write_text(self.out / "distill.json", json.dumps(record, indent=1))
        self.log(json.dumps(record["student_vs_teacher"]))
        return record


def distillation_inputs(image_path, mask_path, size: int):
    """The character (512×512 8-bit RGBA, THA framing) and its optional face mask as the students' training inputs at
    the teacher's size: a reduced teacher (e.g. 256²) gets the character scaled down to it (the students are
    coordinate networks, so the character model still renders at 512²) and the face crop's mask max-pooled (a
    face-crop pixel is movable when any pixel it covers is)."""
    from ...imageio import read_image
    from .convention import to_official

    img = read_image(image_path)
    if img.shape != (512, 512, 4) or img.dtype != np.uint8:
        raise KeyfaceError(f"{image_path}: THA4 distills a 512×512 8-bit RGBA character image, got "
                           f"{img.shape[1]}×{img.shape[0]} {img.dtype}")
    image = to_official(img)
    if size != 512:
        image = F.interpolate(image, size=(size, size), mode="area")
    mask = None
    if mask_path:
        m = read_image(mask_path)
        if m.shape[:2] != (512, 512):
            raise KeyfaceError(f"{mask_path}: the face mask must be 512×512 like the character")
        m = m[face_box(512)]
        m = m[..., :3].max(axis=2) if m.ndim == 3 else m
        mask = torch.from_numpy((m > (m.max() / 2)).astype(np.float32))[None, None]
        if size != 512:
            mask = F.adaptive_max_pool2d(mask, size // 4)
    return image, mask
