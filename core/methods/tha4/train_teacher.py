"""Training keyface's THA4 teacher on the synthetic corpus (``keyface train tha4-teacher --stage face | rotator |
editor``), and the assembled teacher (``tha4-teacher[:FOLDER]``) that ``keyface distill`` can distil.

Data (``keyface synth --framing full --project tha45``; the full framing puts the face box at rows 80–207, columns
192–319 of a 512² image, THA4's crop): ``--poses expression`` pairs train the face morpher (the face crop, rest →
expression, conditioned on pose[0:39]); ``--poses rotation`` pairs train the body rotator (rest → turned, conditioned on
the 6 rotation values; our choice: the rotator learns on neutral faces, the paper's dataset poses face and body
together). Images are in the official convention (linear, premultiplied, [−1, 1]) so a distilled student runs exactly
like an official one.

Phases and schedules (App. B, as fractions of ``steps``): the rotator trains with L1 only for the first 1/19 (the
paper's 1 of 19 epochs), then adds 0.2 × perceptual; the editor is a full-resolution rotator for 19/37 (phases 1–2:
1 + 18 epochs), then trains with the coarse inputs of a frozen half-resolution rotator and L_ED for the rest (18
epochs); Adam (0.5, 0.999), lr 1e-4 after a linear warm-up over 5,000 examples (both options). The face morpher
(THA3's networks; App. B does not cover it) uses the rotator's schedule with its L1 + perceptual terms on the final
crop. Validation: PSNR (official convention, peak-to-peak 2) on validation characters rendered on the fly with seeded
poses of the stage's kind, over the pairs the pose changed; the editor is evaluated in its current phase, and only
phase-3 evaluations (the editor with its coarse inputs, as a teacher runs it) can choose its best checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import KeyfaceError
from ...pixels import quantise
from ...training import RunConfig, RunTrainer, load_split, validation_seeds
from .convention import psnr_official
from .distill import face_box
from .runtime import float_to_official
from .teacher import (
    EDITOR,
    HALF_ROTATOR,
    Editor,
    FaceTeacher,
    FaceTeacherConfig,
    HalfResolutionRotator,
    UNetConfig,
    editor_loss,
    rotator_loss,
)

STAGES = ("face", "rotator", "editor")


@dataclass
class TeacherConfig(RunConfig):
    batch: int = 16
    stage: str = "rotator"
    model: object = None
    features: str = ""
    rotator: str = ""  # editor: the trained half-resolution rotator's generator.safetensors

    @classmethod
    def from_dict(cls, d: dict) -> TeacherConfig:
        d = dict(d)
        d["model"] = _config_class(d["stage"])(**{k: (tuple(v) if isinstance(v, list) else v)
                                                 for k, v in (d.get("model") or {}).items()})
        return cls(**d)


def _config_class(stage: str):
    return FaceTeacherConfig if stage == "face" else UNetConfig


def _module(stage: str, cfg):
    return {"face": FaceTeacher, "rotator": HalfResolutionRotator, "editor": Editor}[stage](cfg)


def _paired_means(ours, identity) -> tuple[float, float]:
    """Mean PSNR of ours and of the identity baseline over the pairs the pose changed (a pair whose posed image equals
    its rest image has no finite identity PSNR and is left out of both)."""
    keep = [i for i, v in enumerate(identity) if np.isfinite(v)]
    if not keep:
        return float("nan"), float("inf")
    return float(np.mean([ours[i] for i in keep])), float(np.mean([identity[i] for i in keep]))


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=0.5, mode="area")


class TeacherTrainer(RunTrainer):
    method = "tha4-teacher"
    config_class = TeacherConfig
    modes = ("supervised",)

    @classmethod
    def load_stage(cls, path, device="cpu"):
        """A trained stage's generator.safetensors (its JSON names the stage)."""
        import json
        from pathlib import Path

        from ...weights import load_weights

        meta = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
        stage = meta.get("stage")
        if stage not in STAGES:
            raise KeyfaceError(f"{path} is not a THA4 teacher stage")
        conf = _config_class(stage)
        return load_weights(path, lambda m: _module(stage, conf(**{k: (tuple(v) if isinstance(v, list) else v)
                                                                  for k, v in m.items()})),
                            "tha4-teacher", device)

    @classmethod
    def load_generator(cls, path, device="cpu"):
        return cls.load_stage(path, device)

    def build(self) -> None:
        from ...features import load_features
        from ...synth.dataset import load_manifest

        cfg = self.cfg
        if cfg.stage not in STAGES:
            raise KeyfaceError(f"stage must be one of {', '.join(STAGES)}")
        cols = load_split(cfg.data, "train", ("rest", "posed", "param_tha45"))
        self.rest, self.posed, self.pose = cols["rest"], cols["posed"], cols["param_tha45"].astype(np.float32)
        self.size = self.rest.shape[1]
        if cfg.model is None:
            cfg.model = {"face": FaceTeacherConfig(), "rotator": HALF_ROTATOR, "editor": EDITOR}[cfg.stage]
        # the stage works at the data's scale: face crop = size/4, half-resolution rotator = size/2, editor = size
        cfg.model = replace(cfg.model, size={"face": self.size // 4, "rotator": self.size // 2,
                                             "editor": self.size}[cfg.stage])
        self.gen = _module(cfg.stage, cfg.model).to(self.device)
        self.modules = {"generator": self.gen}
        self.opt_g = self.adam(self.gen.parameters())
        self.optimizers = {"g": self.opt_g}
        self.features = load_features(cfg.features or None, self.device)
        self.coarse = None
        if cfg.stage == "editor":
            from pathlib import Path

            if not cfg.rotator or not Path(cfg.rotator).exists():
                raise KeyfaceError("the editor's third phase needs a trained half-resolution rotator (--rotator: its "
                                   f"generator.safetensors){f'; {cfg.rotator} does not exist' if cfg.rotator else ''}")
        self.eval_seeds = validation_seeds(load_manifest(cfg.data), cfg.eval_characters)
        self.kind = "expression" if cfg.stage == "face" else "rotation"

    def save_generator(self, path, extra: dict) -> None:
        from ...weights import save_weights

        save_weights(self.gen, path, self.method, {**extra, "stage": self.cfg.stage})

    # data -------------------------------------------------------------------------------------------------------------
    def _inputs(self, rest_u8, posed_u8, pose):
        x = float_to_official(rest_u8 / np.float32(255)).to(self.device)
        y = float_to_official(posed_u8 / np.float32(255)).to(self.device)
        p = torch.from_numpy(pose).to(self.device)
        if self.cfg.stage == "face":
            rows, cols = face_box(self.size)
            return x[:, :, rows, cols], y[:, :, rows, cols], p[:, :39]
        if self.cfg.stage == "rotator":
            return _down(x), _down(y), p[:, 39:45]
        return x, y, p[:, 39:45]

    def _forward(self, x, p, t: float):
        stage = self.cfg.stage
        if stage == "face":
            out = self.gen(x, p)
            return {"blended": out["out"], "warped": out["out"], "direct": out["out"]}
        if stage == "rotator":
            return self.gen(x, p)
        if t < 19 / 37:  # phases 1–2: a full-resolution rotator
            return self.gen(x, p)
        if self.coarse is None:  # read when phase 3 begins (phases 1–2 do not use it)
            self.coarse = self.load_stage(self.cfg.rotator, self.device).requires_grad_(False)
        with torch.no_grad():
            half = self.coarse(_down(x), p)
        return self.gen(x, p, half["blended"], half["flow"])

    def train_step(self) -> dict:
        cfg = self.cfg
        t = self.step / max(cfg.steps, 1)
        idx = self.rng(self.step).integers(0, len(self.rest), cfg.batch)
        x, y, p = self._inputs(self.rest[idx], self.posed[idx], self.pose[idx])
        out = self._forward(x, p, t)
        if cfg.stage == "editor" and t >= 19 / 37:
            terms = editor_loss(out, y, self.features)
        elif cfg.stage == "face":
            terms = {"l1": (out["blended"] - y).abs().mean()}
            total = terms["l1"]
            if t >= 1 / 19:
                from .teacher import phi

                terms["percept"] = phi(self.features, out["blended"], y)
                total = total + 0.2 * terms["percept"]
            terms["total"] = total
        else:
            first = 1 / 19 if cfg.stage == "rotator" else 1 / 37
            terms = rotator_loss(out, y, percept=0.0 if t < first else 0.2, features=self.features)
        self.opt_g.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.opt_g.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    # evaluation -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        self.gen.eval()
        values = []
        t = max(self.step - 1, 0) / max(self.cfg.steps, 1)  # the phase of the last trained step
        for seed in self.eval_seeds:
            rest, posed, p = validation_pair(seed, self.size, self.kind)
            x, y, pp = self._inputs(rest, posed, p)
            out = self._forward(x, pp, t)
            values.append({"ours": psnr_official(out["blended"], y), "identity": psnr_official(x, y)})
        self.gen.train()
        ours, identity = _paired_means([v["ours"] for v in values], [v["identity"] for v in values])
        return {"psnr": ours, "psnr_identity": identity,
                "coarse_inputs": self.cfg.stage == "editor" and t >= 19 / 37}

    def score(self, result: dict) -> float:
        if self.cfg.stage == "editor" and not result["coarse_inputs"]:
            return -math.inf  # phases 1–2 train a plain full-resolution rotator: not the editor a teacher uses
        return result["psnr"]

    def format_eval(self, result: dict) -> str:
        return f"PSNR {result['psnr']:.2f} dB (identity {result['psnr_identity']:.2f})"


def validation_pair(seed: int, size: int, kind: str, k: int = 0):
    """Character ``seed`` at ``size``² (full framing) at rest and in its ``k``-th seeded pose of ``kind``
    (``expression`` or ``rotation``): rest and posed (1, size, size, 4) uint8 and the (1, 45) tha45 pose."""
    from ...rig import convert
    from ...synth.character import sample_character
    from ...synth.dataset import pose_for
    from ...synth.render import FRAMINGS
    from ...synth.sample import PairRenderer, character_vector, sample_pose

    rng = np.random.default_rng([seed, 0x7E4, k] if k else [seed, 0x7E4])  # k = 0: the trainers' validation pose
    pose = pose_for(sample_pose(rng), kind, "tha45")
    pr = PairRenderer(sample_character(seed), (size, size), FRAMINGS["full"])
    rest = quantise(pr.rest.image)[None]
    posed = quantise(pr.renderer.render(pose).image)[None]
    return rest, posed, convert(character_vector(pose)[None], "character", "tha45").astype(np.float32)


class TeacherPipeline:
    """The full teacher: face morpher on the face crop (pasted back), half-resolution rotator on the downscaled image,
    editor at full resolution with its coarse inputs. A folder holds ``face.safetensors``, ``rotator.safetensors`` and
    ``editor.safetensors`` (each with its JSON), the three stages' ``generator.safetensors``, trained at one scale
    (``size``: the editor's; a full-size teacher is 512). Returns what :mod:`.distill` needs of a teacher."""

    def __init__(self, folder, device="cpu"):
        from pathlib import Path

        folder = Path(folder)
        self.device = torch.device(device)
        missing = [n for n in ("face", "rotator", "editor") if not (folder / f"{n}.safetensors").exists()]
        if missing:
            raise KeyfaceError(f"{folder} is not a THA4 teacher folder (no {', '.join(missing)}.safetensors)")
        self.face, self.rotator, self.editor = (TeacherTrainer.load_stage(folder / f"{n}.safetensors", self.device)
                                                for n in ("face", "rotator", "editor"))
        self.size = self.editor.cfg.size
        sizes = (self.face.cfg.size, self.rotator.cfg.size, self.size)
        if sizes != (self.size // 4, self.size // 2, self.size):
            raise KeyfaceError(f"{folder}: the stages were trained at different scales (face crop, rotator, editor "
                               f"{sizes[0]}², {sizes[1]}², {sizes[2]}²; they must be size/4, size/2, size)")

    @torch.no_grad()
    def morph_face(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """The face stage alone: the morphed face crop (B, 4, size/4, size/4)."""
        rows, cols = face_box(image.shape[-1])
        crop = image.to(self.device)[:, :, rows, cols].expand(len(pose), -1, -1, -1)
        return self.face(crop, pose.to(self.device)[:, :39])["out"]

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, pose: torch.Tensor) -> dict:
        image, pose = image.to(self.device), pose.to(self.device)
        rows, cols = face_box(image.shape[-1])
        face = self.morph_face(image, pose)
        img = image.expand(len(pose), -1, -1, -1).clone()
        img[:, :, rows, cols] = face
        rot = pose[:, 39:45]
        half = self.rotator(_down(img), rot)
        out = self.editor(img, rot, half["blended"], half["flow"])
        return {"face": face, "face_image": img, "grid_change": out["flow"], "alpha": out["alpha"],
                "color_change": out["direct"], "warped_image": out["warped"], "image": out["blended"]}


@torch.no_grad()
def evaluate_teacher(teacher: TeacherPipeline, data, batch: int = 8) -> dict:
    """The assembled teacher on a dataset's test split (held-out characters): rest image + the pair's tha45 pose →
    posed image, PSNR in the official convention over the whole image and over the face box, against the identity
    baseline (the rest image itself), over the pairs whose pose changed the image (region); and the face stage alone
    (its morphed crop, before the body rotator) in the face box."""
    cols = load_split(data, "test", ("rest", "posed", "param_tha45"))
    if cols["rest"].shape[1] != teacher.size:
        raise KeyfaceError(f"{data} has {cols['rest'].shape[1]}² images; this teacher works at {teacher.size}²")
    face_rows, face_cols = face_box(teacher.size)
    rows = {k: [] for k in ("psnr", "identity", "face_psnr", "face_identity", "face_stage")}
    for i in range(0, len(cols["rest"]), batch):
        rest = float_to_official(cols["rest"][i:i + batch] / np.float32(255))
        posed = float_to_official(cols["posed"][i:i + batch] / np.float32(255))
        pose = torch.from_numpy(cols["param_tha45"][i:i + batch].astype(np.float32))
        for r, p, y in zip(rest, pose, posed, strict=True):
            out = teacher(r[None], p[None])
            o, f = out["image"][0].cpu(), out["face"][0].cpu()
            rows["psnr"].append(psnr_official(o, y))
            rows["identity"].append(psnr_official(r, y))
            rows["face_psnr"].append(psnr_official(o[:, face_rows, face_cols], y[:, face_rows, face_cols]))
            rows["face_identity"].append(psnr_official(r[:, face_rows, face_cols], y[:, face_rows, face_cols]))
            rows["face_stage"].append(psnr_official(f, y[:, face_rows, face_cols]))  # the face morpher's crop alone
    psnr, identity = _paired_means(rows["psnr"], rows["identity"])
    face, face_identity = _paired_means(rows["face_psnr"], rows["face_identity"])
    face_stage, _ = _paired_means(rows["face_stage"], rows["face_identity"])
    return {"pairs": len(cols["rest"]), "changed_pairs": int(np.isfinite(rows["identity"]).sum()),
            "psnr": psnr, "identity": identity, "face_psnr": face, "face_identity": face_identity,
            "face_stage_psnr": face_stage}
