"""Training ATW (``keyface train atw``): supervised (paired synthetic corpus), GAN (the paper's Algorithm 1: five critic
steps per generator step, WGAN-GP, Adam 1e-4, β = (0.5, 0.999)), or both.

A run folder holds ``config.json``, ``checkpoint.safetensors`` (generator and critics), ``optimizer.pt``,
``state.json`` (step, best validation score), ``log.jsonl`` (losses, evaluations), ``best.safetensors`` + ``best.json``
(the generator at the evaluation with the best validation score) and, at the end, the deployable
``generator.safetensors`` + ``generator.json``. Checkpoints are written every ``checkpoint_minutes`` and at the end;
``resume`` continues from the last one with the same batches (batch ``k`` is drawn from a generator seeded with
(seed, k)).

Evaluations during training use *validation* characters: characters drawn from their own seed stream and checked to
be in neither split of the dataset, so choosing a checkpoint never looks at the test characters (which the final
model card reports on). The score of an evaluation is the mean over :data:`EVAL_TARGETS` of (bias-cancelled PSNR −
identity PSNR): how much better than leaving the image alone the render path does.

Learning rate: ``constant`` (the paper), or ``cosine`` from ``lr`` down to ``lr × lr_min_fraction`` at ``steps`` (our
choice for long CPU runs, where a constant 3e-4 left the evaluation curve noisy). ``init`` starts the generator from
deployable weights (a previous run's ``generator.safetensors``), taking their architecture.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...analytic import psnr
from ...errors import KeyfaceError
from ...io import atomic_write_text
from .conditioning import driving
from .losses import LossWeights, critic_losses, generator_losses
from .networks import ATWConfig, Critic, Generator

MODES = ("supervised", "gan", "both")
LR_SCHEDULES = ("constant", "cosine")
VALIDATION_STREAM = 0x7A11D  # seed of the validation characters' seed stream


def validation_seeds(manifest: dict, n: int) -> list[int]:
    """``n`` character seeds in neither split of a dataset (deterministic)."""
    used = {int(s) for split in manifest["splits"].values() for s in split}
    rng = np.random.default_rng(VALIDATION_STREAM)
    seeds: list[int] = []
    while len(seeds) < n:
        s = int(rng.integers(0, 2 ** 31 - 1))
        if s not in used and s not in seeds:
            seeds.append(s)
    return seeds


def eval_score(rows: dict) -> float:
    """Mean gain in dB of the render path (bias-cancelled) over the identity baseline."""
    return float(np.mean([r["psnr_bias_cancelled"] - r["psnr_identity"] for r in rows.values()]))


@dataclass
class TrainConfig:
    data: str = ""
    steps: int = 2000
    batch: int = 16
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    mode: str = "supervised"
    critic_steps: int = 5
    eval_every: int = 250
    checkpoint_minutes: float = 5.0
    seed: int = 0
    eval_characters: int = 8
    lr_schedule: str = "constant"
    lr_min_fraction: float = 0.05
    init: str = ""
    model: ATWConfig = field(default_factory=ATWConfig)
    weights: LossWeights = field(default_factory=LossWeights)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = ATWConfig(**d.get("model", {}))
        d["weights"] = LossWeights(**d.get("weights", {}))
        return cls(**d)


def to_net(images_u8: np.ndarray) -> torch.Tensor:
    """(B, H, W, 4) uint8 straight RGBA → (B, 4, H, W) premultiplied in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float().div_(255).permute(0, 3, 1, 2)
    x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1)
    return x * 2 - 1


def from_net(x: torch.Tensor) -> np.ndarray:
    """(B, 4, H, W) premultiplied [-1, 1] → (B, H, W, 4) float32 straight RGBA in [0, 1]."""
    x = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    a = x[:, 3:]
    rgb = torch.where(a > 1e-4, x[:, :3] / a.clamp(min=1e-4), torch.zeros_like(x[:, :3])).clamp(0, 1)
    return torch.cat([rgb, a], 1).permute(0, 2, 3, 1).numpy()


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KeyfaceError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


class PairData:
    """A written synthetic dataset's split held in memory as the arrays training needs."""

    def __init__(self, root, split: str):
        from ...synth.dataset import ShardDataset

        ds = ShardDataset(root, split, cache_shards=1)
        if len(ds) == 0:
            raise KeyfaceError(f"the {split} split of {root} is empty")
        cols = {"rest": [], "posed": [], "flow": [], "visible": [], "values": []}
        for name in ds.shards:
            shard = ds._shard(name)
            for k in cols:
                cols[k].append(shard[k])
        self.rest, self.posed = np.concatenate(cols["rest"]), np.concatenate(cols["posed"])
        self.flow = np.concatenate(cols["flow"])
        self.visible = np.concatenate(cols["visible"])
        self.c_t = driving(np.concatenate(cols["values"]))
        self.size = self.rest.shape[1]

    def __len__(self):
        return len(self.rest)

    def batch(self, idx, device):
        return {
            "img": to_net(self.rest[idx]).to(device), "target": to_net(self.posed[idx]).to(device),
            "flow": torch.from_numpy(self.flow[idx].astype(np.float32)).permute(0, 3, 1, 2).to(device),
            "visible": torch.from_numpy(self.visible[idx])[:, None].float().to(device),
            "c_t": torch.from_numpy(self.c_t[idx]).to(device),
            "c_s": torch.zeros(len(idx), self.c_t.shape[1], device=device),
        }


# ------------------------------------------------------------------------------------------------------ evaluation

EVAL_TARGETS = {
    "blink": {"blink_left": 1.0, "blink_right": 1.0},
    "mouth open": {"mouth_open": 1.0},
    "smile": {"mouth_smile": 1.0},
}


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Gaussian window σ = 1.5, per channel) of two images in [0, 1]."""
    import cv2

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    a, b = a.astype(np.float64), b.astype(np.float64)
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return float(s.mean())


def _composite(img: np.ndarray) -> np.ndarray:
    """Straight RGBA [0, 1] → RGB over mid grey (what a viewer compares)."""
    return img[..., :3] * img[..., 3:] + 0.5 * (1 - img[..., 3:])


@torch.no_grad()
def evaluate(gen: Generator, seeds, size: int, device) -> dict:
    """Face-box PSNR / SSIM on held-out characters for each target of :data:`EVAL_TARGETS`, next to the identity
    baseline (output = input)."""
    from ...synth.character import sample_character
    from ...synth.render import FACE_CROP, REST
    from ...synth.sample import PairRenderer, character_vector

    gen.eval()
    rows = {}
    renderers = [PairRenderer(sample_character(s), (size, size), FACE_CROP) for s in seeds]
    for name, values in EVAL_TARGETS.items():
        ours, base, ours_s, base_s = [], [], [], []
        rest = np.stack([np.clip(np.rint(r.rest.image * 255), 0, 255).astype(np.uint8) for r in renderers])
        target = [r.renderer.render({**REST, **values}).image for r in renderers]
        c_t = torch.from_numpy(np.repeat(driving(character_vector({**REST, **values}))[None], len(seeds), 0))
        x = to_net(rest).to(device)
        raw = gen(x, c_t.to(device))[0]
        at_rest = gen(x, torch.zeros_like(c_t).to(device))[0]
        out = from_net(raw)
        cancelled = from_net((x + raw - at_rest).clamp(-1, 1))  # as the render path applies it (pipeline.py)
        rendered = []
        for i in range(len(seeds)):
            t, o, b = _composite(target[i]), _composite(out[i]), _composite(rest[i] / 255.0)
            ours.append(psnr(o, t))
            rendered.append(psnr(_composite(cancelled[i]), t))
            base.append(psnr(b, t))
            ours_s.append(ssim(o, t))
            base_s.append(ssim(b, t))
        rows[name] = {"psnr": float(np.mean(ours)), "psnr_bias_cancelled": float(np.mean(rendered)),
                      "psnr_identity": float(np.mean(base)), "ssim": float(np.mean(ours_s)),
                      "ssim_identity": float(np.mean(base_s))}
    gen.train()
    return rows


def format_eval(rows: dict) -> str:
    lines = ["target        PSNR ours  PSNR identity  SSIM ours  SSIM identity"]
    for name, r in rows.items():
        lines.append(f"{name:<12}  {r['psnr']:9.2f}  {r['psnr_identity']:13.2f}  {r['ssim']:9.4f}  "
                     f"{r['ssim_identity']:13.4f}")
        if "psnr_bias_cancelled" in r:
            lines[-1] += f"   (bias-cancelled PSNR {r['psnr_bias_cancelled']:.2f})"
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ training


def _save_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    from ...io import atomic_write_bytes

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                  metadata={k: json.dumps(v) for k, v in (metadata or {}).items()}))


def _prefixed(prefix: str, module) -> dict:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _unprefixed(prefix: str, tensors: dict) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def save_generator(gen: Generator, path, extra: dict | None = None) -> None:
    """Deployable weights: ``path`` (.safetensors) + the JSON config beside it."""
    path = Path(path)
    _save_safetensors(path, gen.state_dict())
    atomic_write_text(path.with_suffix(".json"), json.dumps({"method": "atw", "model": gen.cfg.to_dict(),
                                                             **(extra or {})}, indent=1))


def load_generator(path, device="cpu") -> Generator:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise KeyfaceError(f"model weights not found: {path}")
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        gen = Generator(ATWConfig(**meta["model"]))
        gen.load_state_dict(load_file(str(path), device=str(device)))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise KeyfaceError(f"cannot load ATW weights {path}: {exc}") from None
    return gen.to(device).eval()


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir, device: str = "auto", resume: bool = False, log=print):
        if cfg.mode not in MODES:
            raise KeyfaceError(f"mode must be one of {', '.join(MODES)}")
        if cfg.lr_schedule not in LR_SCHEDULES:
            raise KeyfaceError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}")
        self.run = Path(run_dir)
        self.log = log
        if resume:
            if not (self.run / "config.json").exists():
                raise KeyfaceError(f"nothing to resume in {self.run} (no config.json)")
            saved = TrainConfig.from_dict(json.loads((self.run / "config.json").read_text()))
            saved.steps = cfg.steps  # a resumed run may be extended
            cfg = saved
        elif (self.run / "checkpoint.safetensors").exists():
            raise KeyfaceError(f"{self.run} already holds a run: use --resume or another folder")
        init = None
        if cfg.init and not resume:
            init = load_generator(cfg.init)
            cfg.model = init.cfg
        self.cfg = cfg
        self.device = pick_device(device)
        torch.manual_seed(cfg.seed)
        self.gen = Generator(cfg.model).to(self.device)
        if init is not None:
            self.gen.load_state_dict(init.state_dict())
        self.gan = cfg.mode in ("gan", "both")
        self.dr = Critic(cfg.model).to(self.device) if self.gan else None
        self.dw = Critic(cfg.model, adversarial=False).to(self.device) if self.gan else None
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), cfg.lr, betas=betas)
        self.opt_d = (torch.optim.Adam(list(self.dr.parameters()) + list(self.dw.parameters()), cfg.lr, betas=betas)
                      if self.gan else None)
        self.step = 0
        self.best_score = -math.inf
        self.run.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load()
        else:
            atomic_write_text(self.run / "config.json", json.dumps(asdict(cfg), indent=1))
        self.train_data = PairData(cfg.data, "train")
        from ...synth.dataset import load_manifest

        self.eval_seeds = validation_seeds(load_manifest(cfg.data), cfg.eval_characters)

    # checkpoints -------------------------------------------------------------------------------------------------
    def _modules(self):
        mods = {"generator": self.gen}
        if self.gan:
            mods.update(critic_r=self.dr, critic_w=self.dw)
        return mods

    def save(self) -> None:
        tensors = {}
        for name, m in self._modules().items():
            tensors.update(_prefixed(name, m))
        _save_safetensors(self.run / "checkpoint.safetensors", tensors)
        optim = {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict() if self.opt_d else None}
        tmp = self.run / ".optimizer.pt.tmp"
        torch.save(optim, tmp)
        tmp.replace(self.run / "optimizer.pt")
        best = self.best_score if math.isfinite(self.best_score) else None
        atomic_write_text(self.run / "state.json", json.dumps({"step": self.step, "best_score": best}))

    def _load(self) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(self.run / "checkpoint.safetensors"), device=str(self.device))
        for name, m in self._modules().items():
            m.load_state_dict(_unprefixed(name, tensors))
        optim = torch.load(self.run / "optimizer.pt", map_location=self.device, weights_only=True)
        self.opt_g.load_state_dict(optim["g"])
        if self.opt_d and optim["d"]:
            self.opt_d.load_state_dict(optim["d"])
        state = json.loads((self.run / "state.json").read_text())
        self.step = state["step"]
        self.best_score = -math.inf if state.get("best_score") is None else state["best_score"]

    # steps -------------------------------------------------------------------------------------------------------
    def _batch(self, k: int) -> dict:
        rng = np.random.default_rng([self.cfg.seed, k])
        return self.train_data.batch(rng.integers(0, len(self.train_data), self.cfg.batch), self.device)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if cfg.lr_schedule == "constant":
            return cfg.lr
        t = min(step / max(cfg.steps, 1), 1.0)
        return cfg.lr * (cfg.lr_min_fraction + (1 - cfg.lr_min_fraction) * 0.5 * (1 + math.cos(math.pi * t)))

    def train_step(self) -> dict:
        cfg, w = self.cfg, self.cfg.weights
        lr = self.lr_at(self.step)
        for opt in (self.opt_g, self.opt_d):
            for group in (opt.param_groups if opt else ()):
                group["lr"] = lr
        logs = {}
        if self.gan:
            for i in range(cfg.critic_steps):
                b = self._batch(self.step * (cfg.critic_steps + 1) + i + 1)
                with torch.no_grad():
                    fake = self.gen(b["img"], b["c_t"])[0]
                d = critic_losses(self.dr, self.dw, b["img"], fake, b["c_s"], w)
                self.opt_d.zero_grad(set_to_none=True)
                (d["d_r"] + d["d_w"]).backward()
                self.opt_d.step()
            logs.update({k: float(v.detach()) for k, v in d.items()})
        b = self._batch(self.step * (cfg.critic_steps + 1))
        out = self.gen(b["img"], b["c_t"])
        sup = cfg.mode in ("supervised", "both")
        g = generator_losses(self.gen, b["img"], b["c_s"], b["c_t"], out, w,
                             target=b["target"] if sup else None, flow_gt=b["flow"], visible=b["visible"],
                             dr=self.dr, dw=self.dw)
        self.opt_g.zero_grad(set_to_none=True)
        g["total"].backward()
        self.opt_g.step()
        self.step += 1
        logs.update({k: float(v.detach()) for k, v in g.items()})
        return logs

    def evaluate(self) -> dict:
        return evaluate(self.gen, self.eval_seeds, self.train_data.size, self.device)

    def fit(self, progress=None, should_stop=lambda: False) -> dict | None:
        cfg = self.cfg
        last_ckpt = time.monotonic()
        log_path = self.run / "log.jsonl"
        started = time.monotonic()
        result = None
        with log_path.open("a") as log:
            while self.step < cfg.steps and not should_stop():
                logs = self.train_step()
                if not all(math.isfinite(v) for v in logs.values()):
                    self.save()
                    raise KeyfaceError(f"training diverged at step {self.step} (non-finite loss); the last "
                                       "checkpoint is kept")
                log.write(json.dumps({"step": self.step, **logs}) + "\n")
                if progress:
                    progress(self.step, logs)
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    result = self.evaluate()
                    score = eval_score(result)
                    log.write(json.dumps({"step": self.step, "eval": result, "score": score}) + "\n")
                    self.log(f"step {self.step} (validation score {score:+.3f} dB)\n{format_eval(result)}")
                    if score > self.best_score:
                        self.best_score = score
                        save_generator(self.gen, self.run / "best.safetensors",
                                       {"steps": self.step, "mode": cfg.mode, "data": cfg.data, "score": score,
                                        "validation": result})
                log.flush()
                if time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes:
                    self.save()
                    last_ckpt = time.monotonic()
        self.save()
        if self.step >= cfg.steps:
            result = result or self.evaluate()
            save_generator(self.gen, self.run / "generator.safetensors",
                           {"steps": self.step, "mode": cfg.mode, "data": cfg.data, "validation": result,
                            "train_seconds_this_process": round(time.monotonic() - started, 1)})
        return result
