"""Training ATW (``keyface train atw``): supervised (paired synthetic corpus), GAN (the paper's Algorithm 1: five critic
steps per generator step, WGAN-GP, Adam 1e-4, β = (0.5, 0.999)), or both. Run folders, checkpoints, resume, validation
characters, the best checkpoint and learning-rate schedules are the shared conventions of :mod:`keyface.core.training`.

The validation score is the mean over :data:`EVAL_TARGETS` of (bias-cancelled PSNR − identity PSNR): how much better
than leaving the image alone the render path does; ``select="worst"`` scores the smallest of those gains instead (the
shipped model must beat the baseline on every target, so the best checkpoint is the one whose worst target is best).
``init`` starts the generator from deployable weights (a previous run's ``generator.safetensors``), taking their
architecture; a cosine schedule (our choice for long CPU runs, where a constant 3e-4 left the evaluation curve noisy)
is available besides the paper's constant rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import KeyfaceError
from ...metrics import psnr, ssim
from ...pixels import from_net, over_grey, quantise, to_net
from ...rig import get_schema
from ...training import RunConfig, RunTrainer, data_roots, load_split, lr_factor, mixed_indices, validation_characters
from .conditioning import SCHEMA, driving
from .losses import LossWeights, critic_losses, generator_losses
from .networks import ATWConfig, Critic, Generator

MODES = ("supervised", "gan", "both")


def eval_score(rows: dict, select: str = "mean") -> float:
    """Gain in dB of the render path (bias-cancelled) over the identity baseline: the mean over the targets, or the
    worst target's."""
    gains = [r["psnr_bias_cancelled"] - r["psnr_identity"] for r in rows.values()]
    rules = {"mean": np.mean, "worst": np.min}
    if select not in rules:
        raise ValueError(f"select must be one of {', '.join(rules)}, got {select!r}")
    return float(rules[select](gains))


FOCUS = 0.5  # a pair counts for an AU's focus share when its driving value (AU intensity / 5) is at least this


@dataclass
class TrainConfig(RunConfig):
    model: ATWConfig = field(default_factory=ATWConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    select: str = "mean"  # best checkpoint by the mean gain over the targets or by the worst target's
    # our addition (empty = the paper's uniform batches): {AU name: F} draws that fraction of each batch from the pairs
    # whose target has that AU at intensity ≥ :data:`FOCUS` × 5; a full smile (AU12) is in ~6 % of the pairs and
    # changes ~0.3 % of a face crop's pixels, and 6,280 uniform steps did not learn it
    focus: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = ATWConfig(**d.get("model", {}))
        d["weights"] = LossWeights(**d.get("weights", {}))
        return cls(**d)


class PairData:
    """A written synthetic dataset's split held in memory as the arrays training needs."""

    def __init__(self, root, split: str):
        cols = load_split(root, split, ("rest", "posed", "flow", "visible", "values"))
        self.rest, self.posed, self.flow, self.visible = cols["rest"], cols["posed"], cols["flow"], cols["visible"]
        self.c_t = driving(cols["values"])
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


@torch.no_grad()
def evaluate(gen: Generator, seeds, size: int, device) -> dict:
    """Face-box PSNR / SSIM on held-out characters for each target of :data:`EVAL_TARGETS`, next to the identity
    baseline (output = input)."""
    from ...synth.character import character_of
    from ...synth.render import FACE_CROP, REST
    from ...synth.sample import PairRenderer, character_vector

    gen.eval()
    rows = {}
    renderers = [PairRenderer(character_of(s), (size, size), FACE_CROP) for s in seeds]
    for name, values in EVAL_TARGETS.items():
        ours, base, ours_s, base_s = [], [], [], []
        rest = np.stack([quantise(r.rest.image) for r in renderers])
        target = [r.renderer.render({**REST, **values}).image for r in renderers]
        c_t = torch.from_numpy(np.repeat(driving(character_vector({**REST, **values}))[None], len(seeds), 0))
        x = to_net(rest).to(device)
        raw = gen(x, c_t.to(device))[0]
        at_rest = gen(x, torch.zeros_like(c_t).to(device))[0]
        out = from_net(raw)
        cancelled = from_net((x + raw - at_rest).clamp(-1, 1))  # as the render path applies it (pipeline.py)
        rendered = []
        for i in range(len(seeds)):
            t, o, b = over_grey(target[i]), over_grey(out[i]), over_grey(rest[i] / 255.0)
            ours.append(psnr(o, t))
            rendered.append(psnr(over_grey(cancelled[i]), t))
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


class Trainer(RunTrainer):
    method = "atw"
    config_class = TrainConfig
    generator_class = Generator
    model_config_class = ATWConfig
    modes = MODES

    def build(self) -> None:
        cfg = self.cfg
        if cfg.weights.img_cancelled and cfg.mode == "gan":
            raise KeyfaceError("the cancelled term compares with the true posed image: use --mode supervised or both")
        self.gen = Generator(cfg.model).to(self.device)
        self.gan = cfg.mode in ("gan", "both")
        self.dr = Critic(cfg.model).to(self.device) if self.gan else None
        self.dw = Critic(cfg.model, adversarial=False).to(self.device) if self.gan else None
        self.modules = {"generator": self.gen}
        if self.gan:
            self.modules.update(critic_r=self.dr, critic_w=self.dw)
        self.opt_g = self.adam(self.gen.parameters())
        self.opt_d = self.adam(list(self.dr.parameters()) + list(self.dw.parameters())) if self.gan else None
        self.optimizers = {"g": self.opt_g, "d": self.opt_d}
        self.train_data = PairData(cfg.data, "train")
        self.focus = self.focus_pools()
        from ...synth.dataset import load_manifest

        self.eval_seeds = validation_characters(load_manifest(data_roots(cfg.data)[0]), cfg.eval_characters)

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * lr_factor(self.cfg, step)

    def focus_pools(self) -> list:
        """(indices, share) per AU of ``cfg.focus``: the training pairs whose target has that AU at ≥ FOCUS."""
        names = list(get_schema(SCHEMA).names)
        pools = []
        for au, share in self.cfg.focus.items():
            if au not in names:
                raise KeyfaceError(f"focus: unknown action unit {au!r} (one of {', '.join(names)})")
            if not 0 <= share <= 1:
                raise KeyfaceError(f"focus: the share of {au} must be in [0, 1], got {share}")
            idx = np.flatnonzero(self.train_data.c_t[:, names.index(au)] >= FOCUS)
            if share and not len(idx):
                raise KeyfaceError(f"{self.cfg.data}: no training pair has {au} at intensity ≥ {FOCUS * 5:g} (focus)")
            pools.append((idx, share))
        if sum(share for _, share in pools) > 1:
            raise KeyfaceError("focus: the shares add up to more than 1")
        return pools

    def batch_indices(self, k: int) -> np.ndarray:
        """Training-pair indices of batch ``k`` (seeded): the focus shares first, then uniform draws."""
        return mixed_indices(self.rng(k), self.cfg.batch, len(self.train_data), self.focus)

    def _batch(self, k: int) -> dict:
        return self.train_data.batch(self.batch_indices(k), self.device)

    def train_step(self) -> dict:
        cfg, w = self.cfg, self.cfg.weights
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
        rest = self.gen(b["img"], b["c_s"])[0] if sup and w.img_cancelled else None
        g = generator_losses(self.gen, b["img"], b["c_s"], b["c_t"], out, w,
                             target=b["target"] if sup else None, flow_gt=b["flow"], visible=b["visible"],
                             dr=self.dr, dw=self.dw, rest=rest)
        self.opt_g.zero_grad(set_to_none=True)
        g["total"].backward()
        self.opt_g.step()
        logs.update({k: float(v.detach()) for k, v in g.items()})
        return logs

    def evaluate(self) -> dict:
        return evaluate(self.gen, self.eval_seeds, self.train_data.size, self.device)

    def score(self, result: dict) -> float:
        return eval_score(result, self.cfg.select)

    def format_eval(self, result: dict) -> str:
        return format_eval(result)
