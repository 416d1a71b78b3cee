"""Training F³A-GAN (``keyface train f3a``), the paper's two stages (§III-C), on a paired synthetic dataset written by
``keyface synth --framing head`` (rest image = source I_s, posed image = target Î_t, the engine's exact 3DMM
parameters and mesh). Run folders, resume, validation characters and the best checkpoint follow
:mod:`keyface.core.training`.

**Stage ``regressor``** (§III-C-1): the crop → 3DMM parameters. Warm-up loss Eq. (8): L_warm = L_shp + λ1·L_lm +
λ2·L_tr + λ3·L_reg with L_shp the mean L1 of the shape offsets (A_id Δα_id + A_exp Δα_exp, character units), L_lm
the L1 of the projected 2D landmarks in face-box sides (eyes and mouth weighted 2×, Eq. 5's w_lm), L_tr the L1 of
rotation (in 30° units), scale and translation, L_reg the L1 of α_id and α_exp; λ1 = 1, λ2 = 1, λ3 = 1e-3 (the paper
gives no values); our addition: a squared error of α_exp (weight 10, :func:`regressor_losses` says why). ``--mode
sub`` is Eq. (9), L_lm + λ3·L_reg, for a fine-tuning run on pairs with landmarks only. Ground truth: the engine's
parameters of the posed image (its body roll adds to the head roll the image shows; the neck's shift is the
translation). Our addition: each crop is zoomed by a ∈ [0.85, 1.15] about the face centre and shifted by up to
±8 px (the scale and translation targets follow exactly), and its colours scaled per channel by [0.7, 1.3], so that a
detected face box that is a little off, or another palette, is fitted rather than mistaken for a pose.

**Stage ``generator``** (§III-C-2): triplets {I_s, Î_t, condition} with the condition made from the engine's exact
source and target meshes (the source mesh: the character's identity at rest; the target: the posed image's
parameters). Loss Eq. (13): L_tot = L_adv + λ4·L_wp + λ5·L_perc, with

* L_wp (Eq. 10): L1 weighted by w = 1 + ``part_weight`` (default 4) inside the boxes around the eyes, nose and mouth
  landmarks of source and target (3 px margin);
* L_perc (Eq. 12): the paper uses its own T_enc; we use keyface's feature network (:mod:`keyface.core.features`) —
  the issue's choice — on conv1_1 … conv4_2;
* L_adv (Eq. 11): WGAN critic D(Î_t) − D(T(I_s, f)) with gradient penalty 10 (Eq. 11 is the WGAN form), one critic
  step per generator step, in ``--mode gan`` only; ``supervised`` drops it (no critic: the CPU runs and the ablation);
* λ4 = 10, λ5 = 1, adversarial weight 0.01 (the paper gives none).

Our addition: a share of each batch (``identity_share``, default 1/8) is the source with itself and a zero
condition: §III-B-1 says the image stream learns to reconstruct its input; without the pair the network never sees
"no motion" except in the dataset's neutral samples. The fade-in α ramps from 0 to 1 over the first ``fade_fraction``
(0.4) of the steps; 0 keeps α = 1 (a run that continues a faded-in generator).

The validation score is −MAE (RGB over grey) on validation characters' pairs rendered at build time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ...errors import KeyfaceError
from ...features import perceptual_loss
from ...losses import gradient_penalty
from ...metrics import image_metrics, mean_rows
from ...pipeline import CANCELLED_ALPHA_EPS
from ...pixels import from_net, premultiply, to_net, unpremultiply
from ...rig import character_schema
from ...training import RunConfig, RunTrainer, load_split, validation_seeds
from . import geometry as geo
from .networks import Critic, F3AConfig, F3AGenerator, Regressor, RegressorConfig

ROLL = character_schema().names.index("body_roll")


@dataclass
class LossWeights:
    adv: float = 0.01
    wp: float = 10.0          # λ4
    perc: float = 1.0         # λ5
    gp: float = 10.0
    part_weight: float = 4.0  # w inside the feature boxes is 1 + this
    shp: float = 1.0          # regressor: Eq. (8)
    lm: float = 1.0           # λ1
    tr: float = 1.0           # λ2
    reg: float = 1e-3         # λ3
    exp_l2: float = 10.0      # our addition: squared error of α_exp (see regressor_losses)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ ground truth


def true_params(param_3dmm: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The engine's parameters of posed images as the regressor's targets (module docstring)."""
    p = param_3dmm.astype(np.float32).copy()
    p[:, geo.SL_ANG.start + 2] += values[:, ROLL]
    p[:, geo.K + geo.L + 5] = 0.0
    p[:, geo.I_SCALE] = 1.0
    return p


def source_params(param_3dmm: np.ndarray) -> np.ndarray:
    """The rest image's parameters: the character's identity, neutral, unrotated."""
    p = geo.neutral_params(len(param_3dmm))
    p[:, geo.SL_ID] = param_3dmm[:, geo.SL_ID]
    return p


def part_weights(src: np.ndarray, tgt: np.ndarray, size: int, extra: float, margin: float = 3.0) -> np.ndarray:
    """(B, 1, size, size) L_wp's weight: 1 + ``extra`` inside the eyes', nose's and mouth's landmark boxes."""
    w = np.ones((len(src), 1, size, size), np.float32)
    for i, meshes in enumerate(zip(src, tgt, strict=True)):
        for idx in geo.PARTS.values():
            pts = np.concatenate([m[idx, :2] for m in meshes])
            x0, y0 = np.floor(pts.min(0) - margin).astype(int).clip(0, size)
            x1, y1 = np.ceil(pts.max(0) + margin).astype(int).clip(0, size)
            w[i, 0, y0:y1 + 1, x0:x1 + 1] = 1 + extra
    return w


def render_pairs(seeds, poses: int, size: int, seed: int = 0) -> dict:
    """Pairs of characters outside a dataset (validation), rendered on the fly exactly as ``keyface synth --framing
    head`` renders a character's shard (:func:`keyface.core.synth.dataset.render_character`)."""
    from ...synth.dataset import SynthConfig, render_character

    cfg = asdict(SynthConfig(size=size, poses_per_character=poses, framing="head", seed=seed))
    chars = [render_character(s, cfg) for s in seeds]
    return {k: np.concatenate([c[k] for c in chars]) for k in ("rest", "posed", "param_3dmm", "param_au17", "values")}


# ------------------------------------------------------------------------------------------------ generator stage


def _config(cls, model_cls, d: dict):
    """A run config from its saved JSON (``config.json``): the model config and loss weights rebuilt."""
    d = dict(d)
    d["model"] = model_cls(**d.get("model", {}))
    d["weights"] = LossWeights(**d.get("weights", {}))
    return cls(**d)


@dataclass
class TrainConfig(RunConfig):
    batch: int = 8
    lr: float = 2e-4
    mode: str = "supervised"
    model: F3AConfig = field(default_factory=F3AConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    features: str = ""
    identity_share: float = 0.125
    fade_fraction: float = 0.4
    eval_poses: int = 6

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _config(cls, F3AConfig, d)


@torch.no_grad()
def run_generator(gen: F3AGenerator, rest_u8, cond, device, batch: int = 16) -> np.ndarray:
    gen.eval()
    outs = []
    for i in range(0, len(rest_u8), batch):
        x = to_net(rest_u8[i:i + batch]).to(device)
        outs.append(from_net(gen(x, torch.from_numpy(cond[i:i + batch]).to(device))))
    return np.concatenate(outs)


def evaluate_set(gen: F3AGenerator, data: dict, device, cancelled: bool = False) -> dict:
    """Mean MAE / MSE / SSIM of the generator (exact conditions) and of the identity baseline over pairs; with
    ``cancelled`` also of the bias-cancelled output keyface applies, source + G(target) − G(rest) in premultiplied
    colour (:mod:`keyface.core.pipeline`)."""
    size = gen.cfg.size
    src_p, tgt_p = source_params(data["param_3dmm"]), true_params(data["param_3dmm"], data["values"])
    outs, rests = [], []
    for i in range(0, len(src_p), 32):
        sl = slice(i, i + 32)
        cond = geo.conditions(gen.cfg.condition, src_p[sl], tgt_p[sl], data["param_au17"][sl], size)
        outs.append(run_generator(gen, data["rest"][sl], cond, device))
        if cancelled:
            rest = geo.conditions(gen.cfg.condition, src_p[sl], src_p[sl], np.zeros_like(data["param_au17"][sl]), size)
            rests.append(run_generator(gen, data["rest"][sl], rest, device))
    out = np.concatenate(outs)
    ours = [image_metrics(o, t / 255.0) for o, t in zip(out, data["posed"], strict=True)]
    base = [image_metrics(r / 255.0, t / 255.0) for r, t in zip(data["rest"], data["posed"], strict=True)]
    result = {"ours": mean_rows(ours), "identity": mean_rows(base)}
    if cancelled:
        src = data["rest"] / np.float32(255)
        applied = unpremultiply(premultiply(src) + premultiply(out) - premultiply(np.concatenate(rests)),
                                eps=CANCELLED_ALPHA_EPS)
        result["cancelled"] = mean_rows([image_metrics(np.clip(a, 0, 1), t / 255.0)
                                         for a, t in zip(applied, data["posed"], strict=True)])
    return result


class Trainer(RunTrainer):
    method = "f3a"
    config_class = TrainConfig
    generator_class = F3AGenerator
    model_config_class = F3AConfig
    modes = ("supervised", "gan")

    def build(self) -> None:
        from ...features import load_features
        from ...synth.dataset import load_manifest

        cfg = self.cfg
        self.gen = F3AGenerator(cfg.model).to(self.device)
        self.use_generator(self.gen, Critic)
        self.features = load_features(cfg.features or None, self.device) if cfg.weights.perc else None
        self.data = load_split(cfg.data, "train", ("rest", "posed", "param_3dmm", "param_au17", "values"))
        if self.data["rest"].shape[1] != cfg.model.size:
            raise KeyfaceError(f"{cfg.data} holds {self.data['rest'].shape[1]}² images; the model is "
                               f"{cfg.model.size}² (keyface synth --size {cfg.model.size} --framing head)")
        if not 0 <= cfg.identity_share <= 1:
            raise KeyfaceError("identity share must be in [0, 1]")
        self.src_p = source_params(self.data["param_3dmm"])
        self.tgt_p = true_params(self.data["param_3dmm"], self.data["values"])
        seeds = validation_seeds(load_manifest(cfg.data), cfg.eval_characters)
        self.val = render_pairs(seeds, cfg.eval_poses, cfg.model.size, seed=cfg.seed)

    def _batch(self, k: int):
        cfg = self.cfg
        rng = self.rng(k)
        idx = rng.integers(0, len(self.src_p), cfg.batch)
        same = rng.random(cfg.batch) < cfg.identity_share
        d = self.data
        src_p, tgt_p = self.src_p[idx], self.tgt_p[idx].copy()
        tgt_p[same] = src_p[same]
        au = d["param_au17"][idx].copy()
        au[same] = 0
        target = d["posed"][idx].copy()
        target[same] = d["rest"][idx][same]
        size = cfg.model.size
        meshes = geo.project_np(src_p, size), geo.project_np(tgt_p, size)
        cond = geo.conditions(cfg.model.condition, src_p, tgt_p, au, size, meshes)
        w = part_weights(*meshes, size, cfg.weights.part_weight)
        dev = self.device
        return (to_net(d["rest"][idx]).to(dev), to_net(target).to(dev), torch.from_numpy(cond).to(dev),
                torch.from_numpy(w).to(dev))

    def train_step(self) -> dict:
        cfg, w = self.cfg, self.cfg.weights
        if cfg.fade_fraction > 0:
            self.gen.alpha.fill_(min(1.0, self.step / max(1, int(cfg.fade_fraction * cfg.steps))))
        else:  # no fade-in (a run continuing a faded-in generator, --init)
            self.gen.alpha.fill_(1.0)
        x, target, cond, pw = self._batch(self.step)
        logs = {}
        if self.gan:
            with torch.no_grad():
                fake = self.gen(x, cond)
            d_adv = self.critic(fake).mean() - self.critic(target).mean()
            d_total = d_adv + w.gp * gradient_penalty(self.critic, target, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_total.backward()
            self.opt_d.step()
            logs["d_adv"] = float(d_adv.detach())
        out = self.gen(x, cond)
        l_wp = (pw * (out - target).abs()).mean() / 2  # images in [−1, 1]: /2 is L1 in [0, 1] units
        total = w.wp * l_wp
        logs["wp"] = float(l_wp.detach())
        if self.features is not None:
            l_perc = perceptual_loss(self.features, out, target)
            total = total + w.perc * l_perc
            logs["perc"] = float(l_perc.detach())
        if self.gan:
            l_adv = -self.critic(out).mean()
            total = total + w.adv * l_adv
            logs["adv"] = float(l_adv.detach())
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        logs["total"] = float(total.detach())
        return logs

    def evaluate(self) -> dict:
        r = evaluate_set(self.gen, self.val, self.device)
        self.gen.train()
        return {**r["ours"], **{f"{k}_identity": v for k, v in r["identity"].items()}}

    def score(self, result: dict) -> float:
        return -result["mae"]

    def format_eval(self, result: dict) -> str:
        return (f"validation: MAE {result['mae']:.4f} (identity {result['mae_identity']:.4f}), MSE {result['mse']:.5f} "
                f"({result['mse_identity']:.5f}), SSIM {result['ssim']:.4f} ({result['ssim_identity']:.4f})")


# ------------------------------------------------------------------------------------------------ regressor stage


@dataclass
class RegressorTrainConfig(RunConfig):
    batch: int = 32
    lr: float = 3e-4
    mode: str = "warm"
    model: RegressorConfig = field(default_factory=RegressorConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    augment: bool = True
    eval_poses: int = 8

    @classmethod
    def from_dict(cls, d: dict) -> RegressorTrainConfig:
        return _config(cls, RegressorConfig, d)


def augment(images: np.ndarray, params: np.ndarray, rng: np.random.Generator, size: int) -> tuple:
    """Zoom about the face centre, shift and recolour crops (uint8 RGBA); the targets follow (module docstring)."""
    import cv2

    out, p = np.empty_like(images), params.copy()
    ox, oy = geo.origin(size)
    u = geo.unit(size)
    for i in range(len(images)):
        a = rng.uniform(0.85, 1.15)
        dx, dy = rng.uniform(-8, 8, 2)
        m = np.array([[a, 0, (1 - a) * ox + dx], [0, a, (1 - a) * oy + dy]], np.float32)
        img = cv2.warpAffine(images[i], m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(0, 0, 0, 0))
        gain = rng.uniform(0.7, 1.3, 3)
        img[..., :3] = np.clip(img[..., :3] * gain, 0, 255).astype(np.uint8)
        out[i] = img
        s = p[i, geo.I_SCALE]
        p[i, geo.SL_T] += np.array([dx, dy]) / (2 * u * a * s)
        p[i, geo.I_SCALE] = a * s
    return out, p


def regressor_losses(pred: torch.Tensor, true: torch.Tensor, size: int, w: LossWeights, mode: str) -> dict:
    """Eq. (8) (``warm``) or Eq. (9) (``sub``) for a batch of predicted and true parameters."""
    k, l_ = geo.K, geo.L
    lm_w = torch.ones(geo.basis()[0].shape[0])
    lm_w[geo.PARTS["eyes"] + geo.PARTS["mouth"]] = 2.0
    lm_w = lm_w.to(pred.device) / lm_w.mean()
    side = size / 2.0
    l_lm = ((geo.project(pred, size)[..., :2] - geo.project(true, size)[..., :2]).abs() / side
            * lm_w[None, :, None]).mean()
    l_reg = pred[:, :k + l_].abs().mean()
    if mode == "sub":
        return {"lm": l_lm, "reg": l_reg, "total": w.lm * l_lm + w.reg * l_reg}
    d = pred - true
    _, a_id, a_exp = (torch.from_numpy(a).to(pred.device) for a in geo.basis())
    offs = torch.einsum("njk,bk->bnj", a_id, d[:, :k]) + torch.einsum("njl,bl->bnj", a_exp, d[:, k:k + l_])
    l_shp = offs.abs().mean()
    l_tr = ((d[:, geo.SL_ANG] / 30.0).abs().mean() + d[:, geo.SL_T].abs().mean()
            + d[:, geo.I_SCALE].abs().mean())
    # our addition: each expression coefficient is 0 in most images (the corpus is neutral-heavy, one action group
    # at a time), so every L1 term's optimum for an uncertain image is 0 — measured: with Eq. 8 alone (1,500 steps)
    # the fitted α_exp correlated with the truth at −0.02 (blink) and 0.08 (mouth open); with this squared term, from
    # scratch and without augmentation, 0.56 and 0.64 after 500 steps
    l_exp2 = (d[:, k:k + l_] ** 2).mean()
    total = w.shp * l_shp + w.lm * l_lm + w.tr * l_tr + w.reg * l_reg + w.exp_l2 * l_exp2
    return {"shp": l_shp, "lm": l_lm, "tr": l_tr, "reg": l_reg, "exp2": l_exp2, "total": total}


@torch.no_grad()
def fit_batch(reg: Regressor, images_u8: np.ndarray, device, batch: int = 64) -> np.ndarray:
    reg.eval()
    out = [reg(to_net(images_u8[i:i + batch]).to(device)).cpu().numpy() for i in range(0, len(images_u8), batch)]
    return np.concatenate(out)


def regressor_accuracy(pred: np.ndarray, true: np.ndarray, size: int) -> dict:
    """Landmark error in % of the face box side (mean and 95th percentile over landmarks), the correlation of fitted
    and true α_exp (mean over the coefficients that vary), and mean absolute parameter errors."""
    lp, lt = geo.project_np(pred, size), geo.project_np(true, size)
    err = np.linalg.norm(lp[..., :2] - lt[..., :2], axis=-1) / (size / 2.0) * 100
    e, et = pred[:, geo.SL_EXP], true[:, geo.SL_EXP]
    live = [i for i in range(geo.L) if et[:, i].std() > 0 and e[:, i].std() > 0]
    corr = float(np.mean([np.corrcoef(e[:, i], et[:, i])[0, 1] for i in live])) if live else 0.0
    return {"landmark_pct": float(err.mean()), "landmark_pct_p95": float(np.percentile(err, 95)),
            "exp_corr": corr,
            "angle_deg": float(np.abs(pred[:, geo.SL_ANG] - true[:, geo.SL_ANG]).mean()),
            "exp_abs": float(np.abs(pred[:, geo.SL_EXP] - true[:, geo.SL_EXP]).mean()),
            "id_abs": float(np.abs(pred[:, geo.SL_ID] - true[:, geo.SL_ID]).mean()),
            "scale_abs": float(np.abs(pred[:, geo.I_SCALE] - true[:, geo.I_SCALE]).mean())}


class RegressorTrainer(RunTrainer):
    method = "f3a-regressor"
    config_class = RegressorTrainConfig
    generator_class = Regressor
    model_config_class = RegressorConfig
    modes = ("warm", "sub")

    def build(self) -> None:
        from ...synth.dataset import load_manifest

        cfg = self.cfg
        self.reg = Regressor(cfg.model).to(self.device)
        self.modules = {"generator": self.reg}
        self.opt = self.adam(self.reg.parameters())
        self.optimizers = {"g": self.opt}
        d = load_split(cfg.data, "train", ("rest", "posed", "param_3dmm", "values"))
        if d["rest"].shape[1] != cfg.model.size:
            raise KeyfaceError(f"{cfg.data} holds {d['rest'].shape[1]}² images; the regressor is {cfg.model.size}²")
        # every posed image and every character's rest image (once per pair: rest images repeat per character)
        self.images = np.concatenate([d["posed"], d["rest"]])
        self.params = np.concatenate([true_params(d["param_3dmm"], d["values"]), source_params(d["param_3dmm"])])
        seeds = validation_seeds(load_manifest(cfg.data), cfg.eval_characters)
        val = render_pairs(seeds, cfg.eval_poses, cfg.model.size, seed=cfg.seed)
        self.val_images, self.val_params = val["posed"], true_params(val["param_3dmm"], val["values"])

    def train_step(self) -> dict:
        cfg = self.cfg
        rng = self.rng(self.step)
        idx = rng.integers(0, len(self.images), cfg.batch)
        images, params = self.images[idx], self.params[idx]
        if cfg.augment:
            images, params = augment(images, params, rng, cfg.model.size)
        pred = self.reg(to_net(images).to(self.device))
        losses = regressor_losses(pred, torch.from_numpy(params).to(self.device), cfg.model.size, cfg.weights,
                                  cfg.mode)
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def evaluate(self) -> dict:
        r = regressor_accuracy(fit_batch(self.reg, self.val_images, self.device), self.val_params,
                               self.cfg.model.size)
        self.reg.train()
        return r

    def score(self, result: dict) -> float:
        return -result["landmark_pct"]

    def format_eval(self, result: dict) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in result.items())
