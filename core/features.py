"""An offline feature network for perceptual losses: VGG19-shaped, trained by keyface on its synthetic characters.

Pretrained VGG / LPIPS weights cannot be downloaded here, so the perceptual terms of CPTNet (seed 000: conv1_1,
conv2_1, conv3_1, conv4_2 of a VGG19) and THA4 use this network instead. What it is, and why:

* **Shape**: VGG19's convolutional layers up to conv4_4 (blocks of 2, 2, 4, 4 3×3 convolutions with ReLU, 2×2 max
  pooling between blocks), channel widths × ``width`` (default ¼: 16, 32, 64, 128), no batch norm (as VGG19); input
  4 channels, premultiplied RGBA in [−1, 1], the generators' own convention, so transparency is perceived too.
* **Training task** (:func:`train_features`): from one synthetic image (a rest or a posed image of a paired dataset
  written by ``keyface synth``), classify *which training character* it is (identity: hair style, palette,
  proportions, accessories — the appearance a perceptual loss should keep) and regress the character rig's values
  (pose and expression — what must change). ImageNet classification gives VGG features that respond to texture,
  edges and parts; these two tasks ask for the same kind of features on the images keyface actually generates.
* **Taps**: the ReLU outputs of conv1_1, conv2_1, conv3_1 and conv4_2 (the CPTNet layers); the perceptual loss is the
  mean L1 distance of each tap, summed with equal weights (the paper says "weighted summation" without weights).

The shipped weights and how they were trained are in ``core/data/features.json`` (written by training).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import KeyfaceError

VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4))
TAPS = ("conv1_1", "conv2_1", "conv3_1", "conv4_2")
WEIGHTS = Path(__file__).parent / "data" / "features.safetensors"


@dataclass
class FeatureConfig:
    width: float = 0.25
    channels: int = 4
    classes: int = 0     # identity classes (training characters)
    regress: int = 0     # regressed rig values

    def to_dict(self) -> dict:
        return asdict(self)


class FeatureNet(nn.Module):
    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.cfg = cfg
        self.names: list[str] = []
        layers, c = [], cfg.channels
        for b, (width, n) in enumerate(VGG19_BLOCKS, start=1):
            w = max(4, int(round(width * cfg.width)))
            for i in range(1, n + 1):
                layers.append(nn.Conv2d(c, w, 3, padding=1))
                self.names.append(f"conv{b}_{i}")
                c = w
        for conv in layers:  # He initialisation (as torchvision's VGG): without it 16 plain ReLU layers do not train
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.convs = nn.ModuleList(layers)
        self.out_width = c
        self.head = nn.Linear(c, cfg.classes + cfg.regress) if cfg.classes + cfg.regress else None

    def forward(self, x, taps=TAPS) -> list[torch.Tensor]:
        """The ReLU outputs named in ``taps`` (in order); stops after the last one needed."""
        want, out = set(taps), {}
        last = max(self.names.index(t) for t in taps) if taps else len(self.names) - 1
        h = x
        for i, (name, conv) in enumerate(zip(self.names, self.convs, strict=True)):
            if i and name.endswith("_1"):
                h = F.max_pool2d(h, 2)
            h = F.relu(conv(h))
            if name in want:
                out[name] = h
            if i == last:
                break
        return [out[t] for t in taps] if taps else [h]

    def predict(self, x):
        """(identity logits, regressed values) from the last layer's pooled features."""
        h = self.forward(x, taps=())[0].mean(dim=(2, 3))
        y = self.head(h)
        return y[:, :self.cfg.classes], y[:, self.cfg.classes:]


def perceptual_loss(net: FeatureNet, a: torch.Tensor, b: torch.Tensor, taps=TAPS) -> torch.Tensor:
    """Σ over taps of mean |F(a) − F(b)| (the target's features carry no gradient)."""
    fa = net(a, taps)
    with torch.no_grad():
        fb = net(b, taps)
    return sum((x - y).abs().mean() for x, y in zip(fa, fb, strict=True))


_cache: dict = {}


def load_features(path=None, device="cpu") -> FeatureNet:
    """The shipped feature network (frozen, eval mode), cached per (path, device)."""
    from .weights import load_weights

    path = Path(path or WEIGHTS)
    key = (str(path), str(device))
    if key not in _cache:
        if not path.exists():
            raise KeyfaceError(f"feature network weights not found: {path} (train them: keyface train features)")
        net = load_weights(path, lambda m: FeatureNet(FeatureConfig(**m)), "features", device)
        for p in net.parameters():
            p.requires_grad_(False)
        _cache[key] = net
    return _cache[key]


def train_features(data, out, steps: int = 3000, batch: int = 32, lr: float = 3e-4, width: float = 0.25,
                   seed: int = 0, device: str = "cpu", log=print, progress=None) -> dict:
    """Train on a paired dataset (``keyface synth``): identity classification + rig regression (see the module
    docstring). Writes ``out`` (.safetensors) and its JSON (config, command inputs, accuracy on held-out poses of
    the training characters, time). Returns that JSON's record."""
    from .pixels import to_net
    from .training import load_split
    from .weights import pick_device, save_weights

    dev = pick_device(device)
    Path(out).parent.mkdir(parents=True, exist_ok=True)  # fail now, not after training, if it cannot be made
    cols = load_split(data, "train", ("rest", "posed", "values", "char_seed"))
    rest, posed, values, seeds = cols["rest"], cols["posed"], cols["values"].astype(np.float32), cols["char_seed"]
    ids = {s: i for i, s in enumerate(sorted(set(seeds.tolist())))}
    label = np.array([ids[s] for s in seeds.tolist()])
    scale = np.maximum(np.abs(values).max(axis=0), 1e-6)  # regress values in [-1, 1]
    # hold out every 8th pair (a pose of a known character) to measure identity accuracy and regression error
    held = np.arange(len(rest)) % 8 == 7
    train_idx, val_idx = np.nonzero(~held)[0], np.nonzero(held)[0]
    torch.manual_seed(seed)
    net = FeatureNet(FeatureConfig(width=width, classes=len(ids), regress=values.shape[1])).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr)
    rng = np.random.default_rng(seed)
    started = time.monotonic()

    def batch_of(idx):
        use_rest = rng.random(len(idx)) < 0.3  # rest images too (values 0)
        imgs = np.where(use_rest[:, None, None, None], rest[idx], posed[idx])
        vals = np.where(use_rest[:, None], 0.0, values[idx] / scale).astype(np.float32)
        return to_net(imgs).to(dev), torch.from_numpy(label[idx]).to(dev), torch.from_numpy(vals).to(dev)

    losses = []
    for step in range(1, steps + 1):
        for g in opt.param_groups:  # cosine decay to 5 %
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        x, y, v = batch_of(rng.choice(train_idx, batch))
        logits, reg = net.predict(x)
        loss = F.cross_entropy(logits, y) + 10 * F.mse_loss(reg, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step, {"loss": float(loss)})
    net.eval()
    correct, err = [], []
    with torch.no_grad():
        for i in range(0, len(val_idx), 64):
            idx = val_idx[i:i + 64]
            logits, reg = net.predict(to_net(posed[idx]).to(dev))
            correct.append(logits.argmax(1).cpu().numpy() == label[idx])
            err.append(np.abs(reg.cpu().numpy() - values[idx] / scale).mean(axis=1))
    record = {"data": str(data), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
              "characters": len(ids), "pairs": int(len(rest)),
              "heldout_identity_accuracy": float(np.concatenate(correct).mean()),
              "heldout_value_mae_scaled": float(np.concatenate(err).mean()),
              "first_loss": float(np.mean(losses[:20])), "last_loss": float(np.mean(losses[-20:])),
              "train_seconds": round(time.monotonic() - started, 1), "taps": list(TAPS)}
    save_weights(net, out, "features", record)
    log(json.dumps(record))
    return record
