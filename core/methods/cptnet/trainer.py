"""Training CPTNet (``keyface train cptnet``) on a paired synthetic dataset (``keyface synth --project pose5``).

The paper (§4.1): Adam lr 1e-4, β = (0.5, 0.999), batch 8, five critic updates per generator update, the learning
rate decayed linearly to zero over the last 100,000 of 600,000 iterations (here ``lr_schedule="linear_tail"`` with
``decay_steps``; a CPU run scales both down). Modes: ``both`` (the paper's loss: adversarial + L1 + perceptual) and
``supervised`` (L1 + perceptual, no critic). Run folders, resume, validation characters and the best checkpoint follow
:mod:`keyface.core.training`; the validation score (higher is better) compares the bias-cancelled output's error on
the pixels each evaluation pose changes with the unchanged image's (:meth:`Trainer.score`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import KeyfaceError
from ...metrics import ssim
from ...pixels import from_net, over_grey, quantise, to_net
from ...training import (
    RunConfig,
    RunTrainer,
    data_roots,
    load_split,
    mixed_indices,
    teacher_test_pairs,
    validation_characters,
)
from .losses import LossWeights, critic_loss, generator_losses
from .networks import CPTNetConfig, Critic, Generator, drive, load_generator

MODES = ("both", "supervised")
EVAL_POSES = {
    "eyes closed": {"eye_left": 0.0, "eye_right": 0.0},
    "mouth open": {"mouth": 1.0},
    "turn 20° (yaw 1)": {"head_yaw": 1.0},
    "look up (pitch −1)": {"head_pitch": -1.0},
    "all (yaw −.6, pitch .5, wink, mouth .6)": {"head_yaw": -0.6, "head_pitch": 0.5, "eye_left": 0.0, "mouth": 0.6},
}
TEACHER_ROW = "held-out paintings (vs teacher)"  # the validation row of a teacher corpus's test split, if any
REST5 = {"eye_left": 1.0, "eye_right": 1.0, "mouth": 0.0, "head_pitch": 0.0, "head_yaw": 0.0}
EXPRESSIVE = 0.1  # a pair is expressive when an eye or the mouth is this far from rest (pose5 units)
WINK = 0.5        # a pair is a wink when its two eyes differ by more than this (pose5 units)


@dataclass
class TrainConfig(RunConfig):
    batch: int = 8
    mode: str = "both"
    model: CPTNetConfig = field(default_factory=CPTNetConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    features: str = ""  # feature network weights ("" = the shipped one)
    # our addition (0 = the paper's uniform batches): this fraction of each batch is drawn from the training pairs whose
    # eyes or mouth differ from rest (:data:`EXPRESSIVE`); with uniform sampling only ~7 % of the pairs close an eye
    # and ~3 % close just one (measured on the shipped model's data), too few for the face stage to learn in a CPU run
    expression_share: float = 0.0
    # our addition (off = the paper): mirror each pair left–right with probability ½ (the pose follows: eye_left and
    # eye_right swap, yaw changes sign), so every left wink is also a right one (one-eye pairs are ~3 % of the corpus)
    flip: bool = False
    # our addition (0 = the paper): this fraction of each batch is drawn from the one-eye pairs (:data:`WINK`); the
    # expression share alone leaves ~1 wink per batch of 8 and the face stage learned to close both eyes together
    wink_share: float = 0.0
    # our addition (0 = the paper): this fraction of each batch is drawn from the pairs whose mouth is open by at least
    # :data:`EXPRESSIVE`; 4,204 steps with the expression share alone left the mouth unlearned (the mouth is ~1 % of a
    # head crop's pixels)
    mouth_share: float = 0.0
    # our addition (1 = unchanged): with --init, multiply the face stage's attention logits by this (the last layer's
    # attention row and bias) before training. Stage 5's logits (the model card) saturated (median 9, ~12 on the
    # mouth), where neither the attention nor the content head gets a gradient (see losses.py, L_saturation); measured,
    # 30 steps on pairs that open the mouth (their eyes may move too) from stage 5 scaled by 0.25 lowered those pairs'
    # cancelled error 0.310 → 0.240; the mouth itself still did not move (the model card, 2026-12-02)
    attention_scale: float = 1.0
    # our addition (off = the paper, which trains only through the final image): train the face stage alone, on the
    # training pairs whose head pose is at rest, its own image supervised (the losses as set), the head stage idle.
    # Why: stage 5's trunk had stopped drawing the mouth where it is (measured: the mouth signal changed the
    # decoder's features as much everywhere as on the mouth's pixels; an eye's changed them 5× more on its own pixels,
    # and a last layer refitted on the frozen features learned the eyes and not the mouth), and fine-tuning the whole
    # generator did not bring it back in ~700 steps (model card). The face stage alone costs ~1/6 of a full step and,
    # measured from those weights (attention × 0.3, lr 3e-4, half of each batch opening the mouth), drew it: the
    # validation's bias-cancelled mouth error 0.2327 (= the unchanged image's) → 0.136 at step 450, 0.099 at 900. A
    # full run afterwards (--init) retrains the head stage on the changed trunk (the model card's stages 6–8).
    face_stage: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = CPTNetConfig(**d.get("model", {}))
        d["weights"] = LossWeights(**d.get("weights", {}))
        return cls(**d)


def metrics(out: np.ndarray, target: np.ndarray, changed: np.ndarray | None = None, l1_only: bool = False) -> dict:
    """Table 1's metrics on one image pair (straight RGBA [0, 1], compared as RGB over grey): L1, RMSE, SSIM; with a
    (H, W) mask of the pixels the pose changes, also the L1 over them (``changed_l1``; 0 where none changes).
    ``l1_only``: the L1s alone."""
    a, b = over_grey(out), over_grey(target)
    err = np.abs(a - b)
    row = {"l1": float(err.mean())}
    if not l1_only:
        row.update(rmse=float(np.sqrt((err ** 2).mean())), ssim=ssim(a, b))
    if changed is not None:
        row["changed_l1"] = float(err[changed].mean()) if changed.any() else 0.0
    return row


def _mean_rows(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


@torch.no_grad()
def evaluate_pairs(gen: Generator, rest_u8: np.ndarray, posed_u8: np.ndarray, pose5: np.ndarray, device,
                   batch: int = 8) -> dict:
    """Mean L1 / RMSE / SSIM of the generator and of the identity baseline over a set of pairs; for each, also the L1
    over the pixels the pose changes (``changed_l1``), and for the generator the same two L1s of its bias-cancelled
    output, G(I, d) − G(I, rest) + I, what the render path applies (``cancelled_l1``, ``cancelled_changed_l1``)."""
    gen.eval()
    ours, base = [], []
    for i in range(0, len(rest_u8), batch):
        x = to_net(rest_u8[i:i + batch]).to(device)
        d = torch.from_numpy(drive(pose5[i:i + batch])).to(device)
        raw = gen(x, d)["out"]
        out, cancelled = from_net(raw), from_net(raw - gen(x, torch.zeros_like(d))["out"] + x)
        for o, c, r, t in zip(out, cancelled, rest_u8[i:i + batch] / 255.0, posed_u8[i:i + batch] / 255.0,
                              strict=True):
            changed = np.abs(t - r).max(-1) > 1.5 / 255
            ours.append({**metrics(o, t, changed),
                         **{f"cancelled_{k}": v for k, v in metrics(c, t, changed, l1_only=True).items()}})
            base.append(metrics(r, t, changed))
    gen.train()
    return {"ours": _mean_rows(ours), "identity": _mean_rows(base)}


@torch.no_grad()
def evaluate(gen: Generator, seeds, size: int, device) -> dict:
    """Per :data:`EVAL_POSES` row: metrics on characters rendered on the fly (head framing)."""
    from ...rig import character_schema, convert, get_schema
    from ...synth.character import character_of
    from ...synth.render import FRAMINGS
    from ...synth.sample import PairRenderer

    names5 = get_schema("pose5").names
    char_names = character_schema().names
    renderers = [PairRenderer(character_of(s), (size, size), FRAMINGS["head"]) for s in seeds]
    rest = np.stack([quantise(r.rest.image) for r in renderers])
    rows = {}
    for name, pose in EVAL_POSES.items():
        p5 = np.array([{**REST5, **pose}[n] for n in names5], np.float32)
        values = dict(zip(char_names, convert(p5, "pose5", "character"), strict=True))
        target = np.stack([quantise(r.renderer.render(values).image)
                           for r in renderers])
        r = evaluate_pairs(gen, rest, target, np.repeat(p5[None], len(seeds), 0), device)
        rows[name] = _row(r)
    return rows


def _row(pairs: dict) -> dict:
    """A validation row of :func:`evaluate_pairs`' result: ours, and the identity's as ``<metric>_identity``."""
    return {**pairs["ours"], **{f"{k}_identity": v for k, v in pairs["identity"].items()}}


def format_eval(rows: dict) -> str:
    lines = [f"{'pose':<40}  L1 ours  L1 identity  SSIM ours  SSIM identity  changed L1: cancelled  identity"]
    for name, r in rows.items():
        lines.append(f"{name:<40}  {r['l1']:7.4f}  {r['l1_identity']:11.4f}  {r['ssim']:9.4f}  "
                     f"{r['ssim_identity']:13.4f}  {r['cancelled_changed_l1']:20.4f}  {r['changed_l1_identity']:8.4f}")
    return "\n".join(lines)


def mirror(rest: np.ndarray, posed: np.ndarray, d: np.ndarray, which: np.ndarray) -> tuple:
    """Pairs (N, H, W, C) and their conditioning (N, 5), mirrored left–right where ``which``: the images flipped along
    x, the two eyes swapped, yaw negated (pitch and mouth unchanged)."""
    rest, posed, d = rest.copy(), posed.copy(), d.copy()
    rest[which], posed[which] = rest[which, :, ::-1], posed[which, :, ::-1]
    d[which] = d[which][:, [1, 0, 2, 3, 4]] * np.array([1, 1, 1, 1, -1], d.dtype)
    return rest, posed, d


class Trainer(RunTrainer):
    method = "cptnet"
    config_class = TrainConfig
    generator_class = Generator
    model_config_class = CPTNetConfig
    modes = MODES

    def build(self) -> None:
        from ...features import load_features
        from ...synth.dataset import load_manifest

        cfg = self.cfg
        self.gen = Generator(cfg.model).to(self.device)
        self.gan = cfg.mode == "both"
        self.critic = Critic(cfg.model).to(self.device) if self.gan else None
        self.modules = {"generator": self.gen, **({"critic": self.critic} if self.gan else {})}
        self.opt_g = self.adam(self.gen.parameters())
        self.opt_d = self.adam(self.critic.parameters()) if self.gan else None
        self.optimizers = {"g": self.opt_g, "d": self.opt_d}
        self.features = load_features(cfg.features or None, self.device) if cfg.weights.perc else None
        cols = load_split(cfg.data, "train", ("rest", "posed", "param_pose5"))
        self.rest, self.posed, self.d = cols["rest"], cols["posed"], drive(cols["param_pose5"])
        if cfg.face_stage:  # only the pairs whose head is at rest: there the whole change is the face stage's
            keep = np.flatnonzero((self.d[:, 3:] == 0).all(axis=1))
            if not len(keep):
                raise KeyfaceError(f"{cfg.data}: no training pair keeps the head at rest (face stage); make one "
                                   "with keyface synth --poses expression")
            self.rest, self.posed, self.d = self.rest[keep], self.posed[keep], self.d[keep]
        self.expressive = np.flatnonzero(np.abs(self.d[:, :3]).max(axis=1) > EXPRESSIVE)
        self.winks = np.flatnonzero(np.abs(self.d[:, 0] - self.d[:, 1]) > WINK)
        self.mouths = np.flatnonzero(np.abs(self.d[:, 2]) > EXPRESSIVE)
        shares = (cfg.expression_share, cfg.wink_share, cfg.mouth_share)
        if not (all(0 <= v <= 1 for v in shares) and sum(shares) <= 1):
            raise KeyfaceError("the expression share, wink share and mouth share must each be in [0, 1], their sum at "
                               "most 1")
        if cfg.mouth_share and not len(self.mouths):
            raise KeyfaceError(f"{cfg.data}: no training pair opens the mouth (mouth share)")
        if cfg.expression_share and not len(self.expressive):
            raise KeyfaceError(f"{cfg.data}: no training pair moves the eyes or the mouth (expression share)")
        if cfg.wink_share and not len(self.winks):
            raise KeyfaceError(f"{cfg.data}: no training pair closes one eye more than the other (wink share)")
        if self.rest.shape[1] != cfg.model.size:
            cfg.model.size = int(self.rest.shape[1])  # the generator is fully convolutional; record the data's size
        self.eval_seeds = validation_characters(load_manifest(data_roots(cfg.data)[0]), cfg.eval_characters)
        self.eval_teacher = teacher_test_pairs(cfg.data, ("rest", "posed", "param_pose5"))

    def adjust_init(self) -> None:
        if self.cfg.attention_scale != 1:
            head = self.gen.trunk.up[-1]
            with torch.no_grad():
                head.weight[0] *= self.cfg.attention_scale
                head.bias[0] *= self.cfg.attention_scale

    def batch_indices(self, k: int) -> np.ndarray:
        """Training-pair indices of batch ``k`` (seeded): the wink share first, then the mouth share, then the
        expression share, then uniform draws."""
        cfg = self.cfg
        return mixed_indices(self.rng(k), cfg.batch, len(self.rest),
                             [(self.winks, cfg.wink_share), (self.mouths, cfg.mouth_share),
                              (self.expressive, cfg.expression_share)])

    def _batch(self, k: int) -> tuple:
        idx = self.batch_indices(k)
        rest, posed, d = self.rest[idx], self.posed[idx], self.d[idx]  # copies (fancy indexing)
        if self.cfg.flip:
            which = np.random.default_rng([self.cfg.seed, k, 0xF11]).random(len(idx)) < 0.5
            rest, posed, d = mirror(rest, posed, d, which)
        return to_net(rest).to(self.device), to_net(posed).to(self.device), torch.from_numpy(d).to(self.device)

    def _forward(self, x, d) -> dict:
        """What a step trains: the whole generator, or with ``face_stage`` the face stage alone."""
        return self.gen.face_stage(x, d) if self.cfg.face_stage else self.gen(x, d)

    def train_step(self) -> dict:
        cfg, w = self.cfg, self.cfg.weights
        logs = {}
        if self.gan:
            for i in range(cfg.critic_steps):
                x, target, d = self._batch(self.step * (cfg.critic_steps + 1) + i + 1)
                with torch.no_grad():
                    fake = self._forward(x, d)["out"]
                c = critic_loss(self.critic, target, fake, w)
                self.opt_d.zero_grad(set_to_none=True)
                c["d_total"].backward()
                self.opt_d.step()
            logs.update({k: float(v.detach()) for k, v in c.items()})
        x, target, d = self._batch(self.step * (cfg.critic_steps + 1))
        res = self._forward(x, d)
        rest_out = self._forward(x, torch.zeros_like(d))["out"] if w.cancelled else None
        g = generator_losses(res["out"], target, w, self.features, self.critic, source=x, rest_out=rest_out,
                             face_logit=res["face_logit"], face_content=res["face_content"],
                             face_only=(d[:, 3:] == 0).all(1))
        self.opt_g.zero_grad(set_to_none=True)
        g["total"].backward()
        self.opt_g.step()
        logs.update({k: float(v.detach()) for k, v in g.items()})
        return logs

    def evaluate(self) -> dict:
        rows = evaluate(self.gen, self.eval_seeds, self.cfg.model.size, self.device)
        if self.eval_teacher is not None:  # a teacher corpus among the data: its held-out paintings, vs the teacher
            t = self.eval_teacher
            rows[TEACHER_ROW] = _row(evaluate_pairs(self.gen, t["rest"], t["posed"], t["param_pose5"], self.device))
        return rows

    def score(self, result: dict) -> float:
        """−(mean over the evaluation poses of the bias-cancelled output's changed-pixel L1 / the identity's): what the
        render path shows, each action weighing the same however few pixels it changes (a mouth opening ~1 % of the
        crop), the held-out paintings of a teacher corpus (:data:`TEACHER_ROW`, all their intents) one more row;
        0 = exact, −1 = no better than leaving the image unchanged. (Runs before 2026-12-02 used −mean L1 of
        the raw output, under which a dead mouth cost nothing.)"""
        return -float(np.mean([r["cancelled_changed_l1"] / max(r["changed_l1_identity"], 1e-6)
                               for r in result.values()]))

    def format_eval(self, result: dict) -> str:
        return format_eval(result)


TABLE1_ORDER = ("mask", "grid", "mask+grid", "mask+grid+ms")


def ablation(weights: list, data, device="cpu", out=None) -> list[dict]:
    """Seed 000's Table 1 on the test split of a dataset (held-out characters, their sampled poses): L1, RMSE and SSIM
    of each model (one per variant, from runs of equal budget), plus the identity baseline, in the paper's row order.
    Returns the rows; writes a table to ``out`` when given."""
    cols = load_split(data, "test", ("rest", "posed", "param_pose5"))
    rows, base = [], None
    dev = torch.device(device)
    for path in weights:
        gen = load_generator(path, dev)
        r = evaluate_pairs(gen, cols["rest"], cols["posed"], cols["param_pose5"], dev)
        base = r["identity"]
        meta = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
        rows.append({"variant": gen.cfg.variant, "k": gen.cfg.steps, "weights": str(path),
                     "steps": meta.get("steps"), **r["ours"]})
    rows.sort(key=lambda r: TABLE1_ORDER.index(r["variant"]))
    if out is not None:
        out.write(f"CPTNet ablation on {len(cols['rest'])} held-out pairs ({data}, test split)\n")
        out.write(f"{'method':<22} {'steps':>6} {'L1 ↓':>8} {'RMSE ↓':>8} {'SSIM ↑':>8}\n")
        out.write(f"{'identity (input)':<22} {'':>6} {base['l1']:8.4f} {base['rmse']:8.4f} {base['ssim']:8.4f}\n")
        for r in rows:
            name = f"ours ({r['variant']})"
            out.write(f"{name:<22} {r['steps'] or '':>6} {r['l1']:8.4f} {r['rmse']:8.4f} {r['ssim']:8.4f}\n")
    return rows
