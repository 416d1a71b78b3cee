"""Training style mapping (``keyface train stylemap``) on a paired synthetic dataset written by ``keyface synth
--framing head`` (F³A's crop: the face box is half the crop, its centre at (0.5, 0.45)).

**Where the engine supervises what the paper learns by itself.** Seed 003 learns its keypoints without labels (the
equivariance and prior losses) and its head pose from a pretrained estimator. keyface's ``kp`` schema promises that
keypoint k is a named facial landmark (:data:`keyface.core.synth.face.KP_LANDMARKS`) and that its expression deltas
are the engine's exact ones, so the engine's ground truth supervises (our choice, the issue allows it):

* the canonical keypoints c_k: the character's *neutral* landmark k in the rest pose, for the rest and the posed
  image alike (c is pose- and expression-free);
* the head rotation (yaw, pitch, roll + the body's roll, which the image shows as head roll: the trainer's test checks
  it against the rotation of the engine's mesh) as Hopenet's loss: cross-entropy over the 66 bins of 3° plus the L1
  of the expected angle (in 10° units, × ``angle_l1``: 1 in the joint stage; the shipped detector stage used 10, as
  after 1,225 joint steps the expected angles were compressed toward 0 — slope 0.22 of the truth for yaw on test
  images — which the bins' cross-entropy alone corrects slowly);
* the expression deltas δ_k: the engine's displacement of landmark k by the expression, rotated into the posed frame
  (the paper's x = R·c + t + δ adds δ after the rotation);
* the translation t: what remains, the mean over all 44 landmarks of x − R·c − δ (exact: the engine's head moves
  rigidly about its pivots);
* the final keypoints x (L1) and, as the paper, the equivariance of x under a random affine transform of the image
  (rotation ±10°, scale 0.9–1.1, shift ±8 % of the crop);
* the composed motion: its depth-averaged 2D displacement (:func:`.networks.flow_2d`) against the engine's backward
  flow of the pair (L1 in pixels / 16, where the flow is known and visible; 0 for identity pairs), weight 10;
* the occlusion mask (up-sampled to the image): binary cross-entropy against the engine's visibility of each driving
  pixel in the source (1 for identity pairs; unknown, so left out, for the reversed pairs). The paper's mask is
  learned only through the image loss; unsupervised, ours stayed at 1 everywhere in a first run (measured at step 300:
  mean 0.9996, the same where the engine says the content is new), and the render path needs it to know where the
  source cannot be warped.

Coordinates: keypoints are in the volume's normalised units, x = (px + 0.5)/(g/2) − 1 (same for y), z = depth px
/(g/2) (toward the viewer). The face box side is g/2, so one unit is one face-box side: the ``kp`` schema's
expression deltas (head-box units) are the network's deltas as they are, in the head frame.

**The generator** is trained with the *engine's* keypoints of both images (plus Gaussian noise σ = 0.01, so that it
tolerates the extractor's error), not the extractor's — the two parts learn at once but independently; at render time
it gets the extractor's. Its losses: pixel L1 (×10, in [0, 1] units; like F³A's L_wp, 1 + 4 = 5× inside the engine's
eye, brow and mouth masks of the posed image grown by 4 px, which the flow term weighs the same way: our addition —
these features are 2 % of the crop, and in a run without it the lids and lips barely moved), perceptual (keyface's
feature network, conv1_1 … conv4_2), the flow and occlusion terms above, and in ``--mode gan`` LS-GAN (Mao et al.,
the paper's choice: critic (D(real) − 1)² + D(fake)², generator (D(fake) − 1)², weight 0.1) with keyface's PatchGAN
critic. Pairs:
rest → posed; a share (``reverse_share``, 0.3) posed → rest so that a non-frontal or expressive source is seen (no
engine flow for that direction: the flow term is masked out); a share (``identity_share``, 1/8) the source with
itself.

``--stage detector`` trains only the keypoint extractor and the pose–expression network (their losses above; the
generator is kept), at a larger batch: they are about a tenth of a step's cost, and the pose needs more steps than
the generator gets.

The validation score is −MAE (RGB over grey) of the whole model (extracted keypoints of the rest image and of the
posed image driving the rest image: the paper's reconstruction) on validation characters rendered at build time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ...blocks import PatchCritic
from ...errors import KeyfaceError
from ...features import perceptual_loss
from ...metrics import image_metrics, mean_rows
from ...pixels import from_net, to_net
from ...rig import EXPRESSION_CHANNELS, character_schema
from ...synth import face as fm
from ...training import RunConfig, RunTrainer, load_split, validation_seeds
from . import networks as N

KP_INDEX = np.array([fm.LANDMARK_NAMES.index(n) for n in fm.KP_LANDMARKS])
_NAMES = character_schema().names
_EXP = np.array([_NAMES.index(n) for n in EXPRESSION_CHANNELS])
_HEAD = np.array([_NAMES.index(n) for n in ("head_yaw", "head_pitch", "head_roll")])
_BODY_ROLL = _NAMES.index("body_roll")
COLUMNS = ("rest", "posed", "values", "vertices_rest", "vertices_posed", "flow", "visible", "masks")


@dataclass
class LossWeights:
    pixel: float = 10.0
    part: float = 4.0         # pixel and flow terms weigh 1 + this around the eyes, brows and mouth
    perc: float = 1.0
    flow: float = 10.0
    occlusion: float = 1.0
    adv: float = 0.1
    canonical: float = 10.0
    angles: float = 1.0       # cross-entropy over bins + angle_l1 × L1 of the angle / 10°
    angle_l1: float = 1.0
    translation: float = 10.0
    delta: float = 10.0
    keypoints: float = 10.0
    equivariance: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- engine targets


def normalise(px: np.ndarray, size: int) -> np.ndarray:
    """(…, 3) crop pixels (x, y, depth) → the volume's normalised units (module docstring)."""
    half = size / 2
    out = np.asarray(px, np.float32).copy()
    out[..., :2] = (out[..., :2] + 0.5) / half - 1
    out[..., 2] = out[..., 2] / half
    return out


def angles_of(values: np.ndarray) -> np.ndarray:
    """(B, 3) yaw, pitch, roll in degrees the image shows: the head's, with the body's roll added to the roll."""
    a = values[:, _HEAD].astype(np.float32).copy()
    a[:, 2] += values[:, _BODY_ROLL]
    return a


def rotation_np(angles: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.asarray(angles, np.float32))
    return N.rotation(t[:, 0], t[:, 1], t[:, 2]).numpy()


def keypoint_targets(values: np.ndarray, vertices_rest: np.ndarray, vertices_posed: np.ndarray, size: int) -> dict:
    """The engine's keypoints of a pair (module docstring): ``c`` (B, K, 3) canonical = the rest image's keypoints,
    the posed image's ``angles`` (B, 3), ``R`` (B, 3, 3), ``t`` (B, 3), ``delta`` (B, K, 3, posed frame), ``x``
    (B, K, 3), and ``delta_head`` (B, K, 3): the expression deltas in the head frame (the ``kp`` schema's)."""
    _, _, a_exp = fm.linear_model()
    e = values[:, _EXP].astype(np.float64)
    shift = np.einsum("njl,bl->bnj", a_exp, e) * (size / 4)  # the expression's displacement, crop px (head frame)
    neutral = normalise(vertices_rest - shift, size)  # the rest image's mesh: neutral, unrotated
    d_head = (shift / (size / 2)).astype(np.float32)
    posed = normalise(vertices_posed, size)
    angles = angles_of(values)
    r = rotation_np(angles)
    rotated = np.einsum("bij,bnj->bni", r, neutral + d_head)
    t = (posed - rotated).mean(1)
    delta = np.einsum("bij,bnj->bni", r, d_head)
    return {"c": neutral[:, KP_INDEX], "angles": angles, "R": r, "t": t.astype(np.float32),
            "delta": delta[:, KP_INDEX].astype(np.float32), "x": posed[:, KP_INDEX], "delta_head": d_head[:, KP_INDEX],
            "residual": np.abs(posed - rotated - t[:, None]).max(axis=(1, 2))}


def estimate_pivot(angles: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The point p the head turns about, least squares over poses: t ≈ (I − R)·p (the translation a rotation about p
    gives; the neck's own shift is the residual). Roll turns about the neck and yaw/pitch about the head's pivot in the
    engine, so p is a compromise; the trainer logs it."""
    r = rotation_np(angles)
    a = (np.eye(3)[None] - r).reshape(-1, 3)
    p, *_ = np.linalg.lstsq(a, t.reshape(-1), rcond=None)
    return p.astype(np.float32)


# --------------------------------------------------------------------------------------------------- the config


@dataclass
class TrainConfig(RunConfig):
    batch: int = 8
    lr: float = 2e-4
    model: N.StyleMapConfig = field(default_factory=N.StyleMapConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    features: str = ""
    identity_share: float = 0.125
    reverse_share: float = 0.3
    kp_noise: float = 0.01
    stage: str = "all"  # "detector": only the keypoint extractor and the pose–expression network learn
    eval_poses: int = 6

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = N.StyleMapConfig(**d.get("model", {}))
        d["weights"] = LossWeights(**d.get("weights", {}))
        return cls(**d)


@torch.no_grad()
def reconstruct(model: N.StyleMap, sources_u8: np.ndarray, drivers_u8: np.ndarray, device, batch: int = 16) -> dict:
    """The paper's reconstruction: each driver's extracted pose and expression, with the source's canonical keypoints,
    drive the source. Returns the images (straight RGBA [0, 1]) and the detections."""
    model.eval()
    outs, angles, xs = [], [], []
    for i in range(0, len(sources_u8), batch):
        s = to_net(sources_u8[i:i + batch]).to(device)
        d = to_net(drivers_u8[i:i + batch]).to(device)
        ds, dd = model.detect(s), model.detect(d)
        kp_d, r_d = N.keypoints(ds["c"], dd)
        outs.append(from_net(model(s, ds["x"], kp_d, ds["R"], r_d)["out"]))
        angles.append(torch.stack([dd["angles"][a] for a in ("yaw", "pitch", "roll")], -1).cpu().numpy())
        xs.append(dd["x"].cpu().numpy())
    return {"out": np.concatenate(outs), "angles": np.concatenate(angles), "x": np.concatenate(xs)}


def render_pairs(seeds, poses: int, size: int, seed: int = 0) -> dict:
    """Pairs of characters outside a dataset (validation), rendered exactly as ``keyface synth --framing head``."""
    from ...synth.dataset import SynthConfig, render_character

    cfg = asdict(SynthConfig(size=size, poses_per_character=poses, framing="head", seed=seed))
    chars = [render_character(s, cfg) for s in seeds]
    return {k: np.concatenate([c[k] for c in chars]) for k in COLUMNS}


class Trainer(RunTrainer):
    method = "stylemap"
    config_class = TrainConfig
    generator_class = N.StyleMap
    model_config_class = N.StyleMapConfig
    modes = ("supervised", "gan")

    def build(self) -> None:
        from ...features import load_features
        from ...synth.dataset import load_manifest

        cfg = self.cfg
        size = cfg.model.size
        self.model = N.StyleMap(cfg.model).to(self.device)
        if cfg.stage not in ("all", "detector"):
            raise KeyfaceError("--stage is all or detector")
        if cfg.stage == "detector" and cfg.mode == "gan":
            raise KeyfaceError("the detector stage trains no generator: --mode gan does not apply")
        self.use_generator(self.model, PatchCritic)
        if cfg.stage == "detector":  # the generator is kept as it is
            self.opt_g = self.optimizers["g"] = self.adam([*self.model.kp.parameters(), *self.model.pose.parameters()])
        self.features = load_features(cfg.features or None, self.device) if cfg.weights.perc else None
        for name in ("identity_share", "reverse_share"):
            if not 0 <= getattr(cfg, name) <= 1:
                raise KeyfaceError(f"{name.replace('_', ' ')} must be in [0, 1]")
        self.data = load_split(cfg.data, "train", COLUMNS)
        if self.data["rest"].shape[1] != size:
            raise KeyfaceError(f"{cfg.data} holds {self.data['rest'].shape[1]}² images; the model is {size}² "
                               f"(keyface synth --size {size} --framing head)")
        d = self.data
        self.kp = keypoint_targets(d["values"], d["vertices_rest"], d["vertices_posed"], size)
        pivot = estimate_pivot(self.kp["angles"], self.kp["t"])
        self.model.pivot.copy_(torch.from_numpy(pivot))
        self.log(f"engine keypoints: rigid residual ≤ {self.kp['residual'].max():.2e} units; head pivot "
                 f"({pivot[0]:+.3f}, {pivot[1]:+.3f}, {pivot[2]:+.3f})")
        seeds = validation_seeds(load_manifest(cfg.data), cfg.eval_characters)
        self.val = render_pairs(seeds, cfg.eval_poses, size, seed=cfg.seed)

    # batches ---------------------------------------------------------------------------------------------------------
    def _batch(self, k: int) -> dict:
        cfg, d, kp = self.cfg, self.data, self.kp
        rng = self.rng(k)
        b = cfg.batch
        idx = rng.integers(0, len(d["rest"]), b)
        u = rng.random(b)
        same = u < cfg.identity_share
        rev = (u >= cfg.identity_share) & (u < cfg.identity_share + cfg.reverse_share)
        rest_x, posed_x = kp["c"][idx], kp["x"][idx]
        eye = np.broadcast_to(np.eye(3, dtype=np.float32), (b, 3, 3))
        rest_r, posed_r = eye, kp["R"][idx]
        # source / driving per sample: rest → posed, posed → rest (rev) or rest → rest (same)
        pick = lambda a_rest, a_posed, as_source: np.where(  # noqa: E731
            (rev if as_source else ~(rev | same)).reshape((b,) + (1,) * (a_rest.ndim - 1)), a_posed, a_rest)
        src_img, drv_img = pick(d["rest"][idx], d["posed"][idx], True), pick(d["rest"][idx], d["posed"][idx], False)
        x_s, x_d = pick(rest_x, posed_x, True), pick(rest_x, posed_x, False)
        r_s, r_d = pick(rest_r, posed_r, True), pick(rest_r, posed_r, False)
        flow = np.where(same[:, None, None, None], 0, d["flow"][idx]).astype(np.float32)
        known = ((d["visible"][idx] | same[:, None, None]) & ~rev[:, None, None]).astype(np.float32)
        seen = (d["visible"][idx] | same[:, None, None]).astype(np.float32)  # occlusion target (forward and same)
        grow = np.ones((9, 9), np.uint8)
        parts = np.stack([cv2.dilate((m.max(0) > 127).astype(np.uint8), grow) for m in d["masks"][idx]])
        part_w = 1 + cfg.weights.part * parts.astype(np.float32)
        noise = lambda: rng.normal(0, cfg.kp_noise, x_s.shape).astype(np.float32)  # noqa: E731
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)  # noqa: E731
        zeros = np.zeros((b, 3), np.float32)
        return {
            "src": to_net(src_img).to(self.device), "drv": to_net(drv_img).to(self.device),
            "x_s": t(x_s + noise()), "x_d": t(x_d + noise()), "r_s": t(r_s), "r_d": t(r_d),
            "flow": t(flow.transpose(0, 3, 1, 2)), "known": t(known[:, None] * part_w[:, None]),
            "part": t(part_w[:, None]),
            "seen": t(seen[:, None]), "seen_known": t(np.broadcast_to(~rev[:, None, None, None], seen[:, None].shape)),
            # keypoint-network targets for the rest image and the posed image of each pair, stacked
            "kp_img": torch.cat([to_net(d["rest"][idx]), to_net(d["posed"][idx])]).to(self.device),
            "c": t(np.concatenate([kp["c"][idx]] * 2)),
            "angles": t(np.concatenate([zeros, kp["angles"][idx]])),
            "t": t(np.concatenate([zeros, kp["t"][idx]])),
            "delta": t(np.concatenate([np.zeros_like(kp["delta"][idx]), kp["delta"][idx]])),
            "x": t(np.concatenate([rest_x, posed_x])),
            "affine": t(random_affines(rng, b)),
        }

    # the step --------------------------------------------------------------------------------------------------------
    def keypoint_losses(self, batch: dict) -> dict:
        w = self.cfg.weights
        det = self.model.detect(batch["kp_img"])
        target = batch["angles"]
        ce = sum(F.cross_entropy(det["logits"][a], angle_bins(target[:, i]))
                 for i, a in enumerate(("yaw", "pitch", "roll")))
        l1 = sum((det["angles"][a] - target[:, i]).abs().mean() for i, a in enumerate(("yaw", "pitch", "roll"))) / 10
        losses = {
            "canonical": (det["c"] - batch["c"]).abs().mean(), "angles": ce / 3 + self.cfg.weights.angle_l1 * l1 / 3,
            "translation": (det["t"] - batch["t"]).abs().mean(), "delta": (det["delta"] - batch["delta"]).abs().mean(),
            "keypoints": (det["x"] - batch["x"]).abs().mean(),
        }
        # equivariance (the paper's keypoint consistency) on the posed images: x(T(I)) = T(x(I)) in x and y
        b = len(batch["affine"])
        posed = batch["kp_img"][b:]
        grid = F.affine_grid(batch["affine"], list(posed.shape), align_corners=False)
        moved = self.model.detect(F.grid_sample(posed, grid, align_corners=False, padding_mode="zeros"))["x"]
        # a grid maps output → input: a point p of the image moves to A⁻¹(p − b), moved keypoints x' give A·x' + b = x
        a, off = batch["affine"][:, :, :2], batch["affine"][:, :, 2]
        back = moved[..., :2] @ a.transpose(1, 2) + off[:, None]
        losses["equivariance"] = (back - det["x"][b:, :, :2]).abs().mean()
        return {k: v * getattr(w, k) for k, v in losses.items()}, losses

    def train_step(self) -> dict:
        w = self.cfg.weights
        batch = self._batch(self.step)
        logs = {}
        if self.cfg.stage == "detector":
            weighted, raw = self.keypoint_losses(batch)
            total = sum(weighted.values())
            self.opt_g.zero_grad(set_to_none=True)
            total.backward()
            self.opt_g.step()
            return {**{k: float(v.detach()) for k, v in raw.items()}, "total": float(total.detach())}
        if self.gan:
            with torch.no_grad():
                fake = self.model(batch["src"], batch["x_s"], batch["x_d"], batch["r_s"], batch["r_d"])["out"]
            d_loss = ((self.critic(batch["drv"]) - 1) ** 2).mean() + (self.critic(fake) ** 2).mean()
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            logs["d"] = float(d_loss.detach())
        res = self.model(batch["src"], batch["x_s"], batch["x_d"], batch["r_s"], batch["r_d"])
        out = res["out"]
        pixel = (batch["part"] * (out - batch["drv"]).abs()).mean() / 2
        size = out.shape[-1]
        flow = N.flow_2d(res["motion"], size)
        flow_l = (batch["known"] * (flow - batch["flow"]).abs()).sum() / (2 * batch["known"].sum() + 1) / 16
        occ = F.interpolate(res["occlusion"], size=out.shape[-2:], mode="bilinear", align_corners=False)
        bce = F.binary_cross_entropy(occ.clamp(1e-4, 1 - 1e-4), batch["seen"], reduction="none")
        occ_l = (batch["seen_known"] * bce).sum() / (batch["seen_known"].sum() + 1)
        total = w.pixel * pixel + w.flow * flow_l + w.occlusion * occ_l
        logs.update(pixel=float(pixel.detach()), flow=float(flow_l.detach()), occlusion=float(occ_l.detach()))
        if self.features is not None:
            perc = perceptual_loss(self.features, out, batch["drv"])
            total = total + w.perc * perc
            logs["perc"] = float(perc.detach())
        if self.gan:
            adv = ((self.critic(out) - 1) ** 2).mean()
            total = total + w.adv * adv
            logs["adv"] = float(adv.detach())
        weighted, raw = self.keypoint_losses(batch)
        total = total + sum(weighted.values())
        logs.update({k: float(v.detach()) for k, v in raw.items()})
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        logs["total"] = float(total.detach())
        return logs

    def evaluate(self) -> dict:
        v = self.val
        rec = reconstruct(self.model, v["rest"], v["posed"], self.device)
        self.model.train()
        ours = mean_rows([image_metrics(o, t / 255.0) for o, t in zip(rec["out"], v["posed"], strict=True)])
        base = mean_rows([image_metrics(r / 255.0, t / 255.0) for r, t in zip(v["rest"], v["posed"], strict=True)])
        err = np.abs(rec["angles"] - angles_of(v["values"])).mean()
        return {**ours, **{f"{k}_identity": x for k, x in base.items()}, "angle_error": float(err)}

    def score(self, result: dict) -> float:
        return -result["mae"]

    def format_eval(self, result: dict) -> str:
        return (f"validation: PSNR {result['psnr']:.2f} dB (identity {result['psnr_identity']:.2f}), MAE "
                f"{result['mae']:.4f} ({result['mae_identity']:.4f}), SSIM {result['ssim']:.4f} "
                f"({result['ssim_identity']:.4f}), head pose error {result['angle_error']:.2f}°")


def angle_bins(deg: torch.Tensor) -> torch.Tensor:
    """Degrees → the index of their 3° bin over ±99° (clamped)."""
    return ((deg + N.ANGLE_RANGE) / N.BIN_DEG).floor().long().clamp(0, N.BINS - 1)


def random_affines(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 2, 3) ``affine_grid`` matrices (output → input, normalised coordinates): rotation ±10°, scale 0.9–1.1,
    shift ±0.16 (8 % of the crop)."""
    th = np.radians(rng.uniform(-10, 10, n))
    s = rng.uniform(0.9, 1.1, n)
    c, si = np.cos(th) / s, np.sin(th) / s
    m = np.zeros((n, 2, 3), np.float32)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -si, si, c
    m[:, :, 2] = rng.uniform(-0.16, 0.16, (n, 2))
    return m
