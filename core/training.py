"""Training conventions shared by every method's trainer (written once; ATW and CPTNet use them).

A run folder holds ``config.json``, ``checkpoint.safetensors`` (every module, prefixed by its name), ``optimizer.pt``,
``state.json`` (step, best validation score), ``log.jsonl`` (losses every step, evaluations), ``best.safetensors`` +
``best.json`` (the generator at the evaluation with the best validation score) and, at the end, the deployable
``generator.safetensors`` + ``generator.json``. Checkpoints are written every ``checkpoint_minutes`` and at the end;
``resume`` continues from the last one with the same batches (a method draws batch ``k`` from a generator seeded with
(seed, k)); a resumed run may be extended (more ``steps``).

Evaluations use *validation* characters: drawn from their own seed stream and checked to be in neither split of the
dataset, so choosing a checkpoint never looks at the test characters the model card reports on.

Learning-rate schedules: ``constant``; ``cosine`` from ``lr`` down to ``lr × lr_min_fraction`` at ``steps``;
``linear_tail``: constant, then linear to zero over the last ``decay_steps`` (StarGAN's and CPTNet's schedule); any of
them after a linear warm-up over ``warmup_steps`` (THA4's teachers).
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .errors import KeyfaceError
from .io import atomic_write_text
from .weights import load_weights, pick_device, save_safetensors, save_weights

LR_SCHEDULES = ("constant", "cosine", "linear_tail")
VALIDATION_STREAM = 0x7A11D  # seed of the validation characters' seed stream


# ------------------------------------------------------------------------------------------------------ tensors



def data_roots(data) -> list[str]:
    """A run's ``data``: one dataset folder, or several separated by commas (``--data SYNTH,CORPUS``)."""
    roots = [r.strip() for r in str(data).split(",") if r.strip()]
    if not roots:
        raise KeyfaceError("no dataset given (--data DIR[,DIR…])")
    return roots


def load_split(root, split: str, columns) -> dict[str, np.ndarray]:
    """The named columns of a written dataset's split (``keyface synth``, ``keyface corpus``), concatenated over its
    shards, in memory; ``root`` may name several datasets (:func:`data_roots`), concatenated in that order."""
    from .synth.dataset import ShardDataset

    cols: dict[str, list] = {k: [] for k in columns}
    for folder in data_roots(root):
        ds = ShardDataset(folder, split, cache_shards=1)
        if len(ds) == 0:
            raise KeyfaceError(f"the {split} split of {folder} is empty")
        for name in ds.shards:
            shard = ds._shard(name)
            for k in columns:
                if k not in shard:
                    raise KeyfaceError(f"{folder} has no column {k!r} (written by an older keyface synth?)")
                cols[k].append(shard[k])
    return {k: np.concatenate(v) for k, v in cols.items()}


def teacher_test_pairs(root, columns) -> dict[str, np.ndarray] | None:
    """The held-out pairs of the teacher corpora among ``root``'s datasets (``keyface corpus``) whose target is the
    teacher's frame, not engine truth — the test paintings: a trainer's validation on real artwork. None if there are
    none. Each corpus counts once however often ``--data`` repeats it (repetition weights training, not validation)."""
    from .synth.dataset import load_manifest

    def held_out(m: dict) -> bool:  # a teacher corpus with a test split (--test-paintings or test characters)
        return m.get("kind") == "teacher" and any(v.get("split") == "test" for v in m.get("shards", {}).values())

    folders = [f for f in dict.fromkeys(data_roots(root)) if held_out(load_manifest(f))]
    if not folders:
        return None
    cols = load_split(",".join(folders), "test", (*columns, "has_truth"))
    keep = ~cols.pop("has_truth")
    return {k: v[keep] for k, v in cols.items()} if keep.any() else None


def mixed_indices(rng: np.random.Generator, n: int, size: int, pools=()) -> np.ndarray:
    """``n`` indices into ``size`` training pairs: for each ``(indices, share)`` of ``pools`` in order, round(n·share)
    draws from those indices (with replacement; never more than are left), then uniform draws for the rest. With no
    pools this is ``rng.integers(0, size, n)``, the uniform batch."""
    parts, left = [], n
    for idx, share in pools:
        k = min(round(n * share), left)
        if k:
            parts.append(rng.choice(idx, k))
            left -= k
    parts.append(rng.integers(0, size, left))
    return np.concatenate(parts)


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


def validation_characters(manifest: dict, n: int) -> list[tuple[int, str]]:
    """``n`` validation characters (seed, style family): seeds in neither split, families cycling over the dataset's
    test families (``keyface synth --test-styles``: a style training never saw), ``cel`` for older datasets."""
    cfg = manifest.get("config", {})
    families = list(cfg.get("test_styles") or cfg.get("styles") or ["cel"])
    return [(s, families[i % len(families)]) for i, s in enumerate(validation_seeds(manifest, n))]


# ------------------------------------------------------------------------------------------------------ weights


# ------------------------------------------------------------------------------------------------------ runs


@dataclass
class RunConfig:
    """Fields every trainer has; a method's config adds ``model`` and ``weights`` (and anything else)."""

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
    decay_steps: int = 0
    warmup_steps: int = 0   # linear warm-up from 0 over these steps, on top of the schedule (THA4: 5,000 examples)
    init: str = ""


def lr_factor(cfg: RunConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "constant":
        return warm
    if cfg.lr_schedule == "cosine":
        t = min(step / max(cfg.steps, 1), 1.0)
        return warm * (cfg.lr_min_fraction + (1 - cfg.lr_min_fraction) * 0.5 * (1 + math.cos(math.pi * t)))
    start = cfg.steps - cfg.decay_steps
    return warm * (1.0 if step < start else max(0.0, (cfg.steps - step) / max(cfg.decay_steps, 1)))


UPGRADES = ("adain", "coords")  # model-config switches whose layers an --init upgrade adds, at zero


def upgraded_config(init_cfg, requested):
    """The model config of a run started from ``init`` weights: their architecture, except that a run asking for
    AdaIN-conditioned residual blocks (:class:`keyface.core.blocks.ResBlock`) or coordinate input channels
    (``coords``, :class:`keyface.core.blocks.EncoderDecoder`) upgrades weights trained without them (the new weights
    start at zero, so the upgraded generator computes exactly what the old one did)."""
    switch = {k: True for k in UPGRADES if getattr(requested, k, False) and not getattr(init_cfg, k, True)}
    return replace(init_cfg, **switch) if switch else init_cfg


def load_upgraded(module, state: dict) -> None:
    """Load ``state`` into ``module``, allowing only the zero-started AdaIN layers (``.film.``) to be missing and an
    encoder's first convolution to lack the coordinate channels (``blocks.COORDS``, appended last: zero-padded)."""
    from .blocks import COORDS

    own = module.state_dict()
    state = dict(state)
    for k, v in state.items():
        want = own.get(k)
        if (want is not None and k.endswith("down.0.0.weight") and v.dim() == 4
                and tuple(want.shape) == (v.shape[0], v.shape[1] + COORDS, *v.shape[2:])):
            state[k] = torch.cat([v, v.new_zeros(v.shape[0], COORDS, *v.shape[2:])], 1)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise KeyfaceError(f"the --init weights do not fit this model: {str(e).splitlines()[-1].strip()}") from None
    wrong = list(unexpected) + [k for k in missing if ".film." not in k]
    if wrong:
        raise KeyfaceError(f"the --init weights do not fit this model: {', '.join(wrong[:5])}")


def _prefixed(prefix: str, module) -> dict:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _unprefixed(prefix: str, tensors: dict) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


class RunTrainer(ABC):
    """The loop, checkpoints, resume, evaluations and best checkpoint. A method subclass sets ``method``,
    ``config_class`` and ``modes`` and implements :meth:`build` (modules and optimizers), :meth:`train_step` (one
    generator step, with its critic steps; returns float logs), :meth:`evaluate` (a dict of rows), :meth:`score`
    (higher is better) and :meth:`save_generator`."""

    method = ""
    config_class = RunConfig
    generator_class = None      # the generator module, built from its config class
    model_config_class = None
    modes: tuple = ("supervised",)

    def __init__(self, cfg, run_dir, device: str = "auto", resume: bool = False, log=print):
        if cfg.mode not in self.modes:
            raise KeyfaceError(f"mode must be one of {', '.join(self.modes)}")
        if cfg.lr_schedule not in LR_SCHEDULES:
            raise KeyfaceError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}")
        self.run = Path(run_dir)
        self.log = log
        if resume:
            if not (self.run / "config.json").exists():
                raise KeyfaceError(f"nothing to resume in {self.run} (no config.json)")
            saved = self.config_class.from_dict(json.loads((self.run / "config.json").read_text(encoding="utf-8")))
            saved.steps = cfg.steps  # a resumed run may be extended
            cfg = saved
        elif (self.run / "checkpoint.safetensors").exists():
            raise KeyfaceError(f"{self.run} already holds a run: use --resume or another folder")
        self.init = None
        if cfg.init and not resume:
            self.init = self.load_generator(cfg.init)
            cfg.model = upgraded_config(self.init.cfg, cfg.model)
        self.cfg = cfg
        self.device = pick_device(device)
        torch.manual_seed(cfg.seed)
        self.modules: dict = {}
        self.optimizers: dict = {}
        self.build()
        if self.init is not None:
            load_upgraded(self.modules["generator"], self.init.state_dict())
            self.adjust_init()
        self.step = 0
        self.best_score = -math.inf
        self.run.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load()
        else:
            atomic_write_text(self.run / "config.json", json.dumps(asdict(cfg), indent=1))

    # what each method provides (abstract: a subclass without them cannot be instantiated) --------------------------
    @abstractmethod
    def build(self) -> None:
        """Create ``self.modules`` (``"generator"`` first) and ``self.optimizers``, and load the data."""

    def adjust_init(self) -> None:  # noqa: B027 (an optional hook: most methods keep their --init weights as loaded)
        """A method's change to the --init weights once loaded, before the first step (none unless it overrides)."""

    @abstractmethod
    def train_step(self) -> dict:
        """One generator step (with its critic steps) at ``self.step``; returns the losses as floats."""

    @abstractmethod
    def evaluate(self) -> dict:
        """Evaluation rows on the validation characters."""

    @abstractmethod
    def score(self, result: dict) -> float:
        """One number from :meth:`evaluate`'s rows; higher is better (chooses ``best.safetensors``)."""

    def format_eval(self, result: dict) -> str:
        return json.dumps(result)

    @classmethod
    def load_generator(cls, path, device="cpu"):
        return load_weights(path, lambda m: cls.generator_class(cls.model_config_class(**m)), cls.method, device)

    def save_generator(self, path, extra: dict) -> None:
        save_weights(self.modules["generator"], path, self.method, extra)

    # helpers --------------------------------------------------------------------------------------------------------
    def adam(self, params) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2))

    def use_generator(self, generator, make_critic=None) -> None:
        """Set ``modules`` and ``optimizers`` for a generator and, in ``gan`` mode, the critic ``make_critic()``:
        ``self.gan``, ``self.critic`` (None without), ``self.opt_g``, ``self.opt_d``."""
        self.gan = self.cfg.mode == "gan"
        self.critic = make_critic().to(self.device) if self.gan else None
        self.modules = {"generator": generator, **({"critic": self.critic} if self.gan else {})}
        self.opt_g = self.adam(generator.parameters())
        self.opt_d = self.adam(self.critic.parameters()) if self.gan else None
        self.optimizers = {"g": self.opt_g, "d": self.opt_d}

    def set_lr(self) -> float:
        lr = self.cfg.lr * lr_factor(self.cfg, self.step)
        for opt in self.optimizers.values():
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr
        return lr

    def rng(self, k: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, k])

    # checkpoints ----------------------------------------------------------------------------------------------------
    def save(self) -> None:
        tensors = {}
        for name, m in self.modules.items():
            tensors.update(_prefixed(name, m))
        save_safetensors(self.run / "checkpoint.safetensors", tensors)
        optim = {k: (o.state_dict() if o is not None else None) for k, o in self.optimizers.items()}
        tmp = self.run / ".optimizer.pt.tmp"
        torch.save(optim, tmp)
        tmp.replace(self.run / "optimizer.pt")
        best = self.best_score if math.isfinite(self.best_score) else None
        atomic_write_text(self.run / "state.json", json.dumps({"step": self.step, "best_score": best}))

    def _load(self) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(self.run / "checkpoint.safetensors"), device=str(self.device))
        for name, m in self.modules.items():
            m.load_state_dict(_unprefixed(name, tensors))
        optim = torch.load(self.run / "optimizer.pt", map_location=self.device, weights_only=True)
        for k, o in self.optimizers.items():
            if o is not None and optim.get(k):
                o.load_state_dict(optim[k])
        state = json.loads((self.run / "state.json").read_text(encoding="utf-8"))
        self.step = state["step"]
        self.best_score = -math.inf if state.get("best_score") is None else state["best_score"]

    # the loop -------------------------------------------------------------------------------------------------------
    def fit(self, progress=None, should_stop=lambda: False) -> dict | None:
        cfg = self.cfg
        last_ckpt = time.monotonic()
        started = time.monotonic()
        result = None
        record = {"mode": cfg.mode, "data": cfg.data}
        with (self.run / "log.jsonl").open("a", encoding="utf-8") as log:
            while self.step < cfg.steps and not should_stop():
                self.set_lr()
                logs = self.train_step()
                self.step += 1
                if not all(math.isfinite(v) for v in logs.values()):
                    self.save()
                    raise KeyfaceError(f"training diverged at step {self.step} (non-finite loss); the last "
                                       "checkpoint is kept")
                log.write(json.dumps({"step": self.step, **logs}) + "\n")
                if progress:
                    progress(self.step, logs)
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    result = self.evaluate()
                    score = self.score(result)
                    log.write(json.dumps({"step": self.step, "eval": result, "score": score}) + "\n")
                    self.log(f"step {self.step} (validation score {score:+.4g})\n{self.format_eval(result)}")
                    if score > self.best_score:
                        self.best_score = score
                        self.save_generator(self.run / "best.safetensors",
                                            {"steps": self.step, **record, "score": score, "validation": result})
                log.flush()
                if time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes:
                    self.save()
                    last_ckpt = time.monotonic()
        self.save()
        if self.step >= cfg.steps:
            result = result or self.evaluate()
            self.save_generator(self.run / "generator.safetensors",
                                {"steps": self.step, **record, "validation": result,
                                 "train_seconds_this_process": round(time.monotonic() - started, 1)})
        return result
