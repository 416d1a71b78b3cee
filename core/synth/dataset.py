"""Sharded synthetic datasets on disk (``keyface synth``), and torch datasets reading them or rendering on the fly.

Layout of a dataset folder::

    manifest.json          config, the character seeds of each split, the shards and their sample counts
    train/shard_00000.npz  one shard = whole characters (all their poses), never split across train and test
    test/shard_00000.npz

A shard holds, for its n samples: ``char_seed`` (n,), ``values`` (n, 25) character-rig values, ``rest`` and ``posed``
(n, H, W, 4) uint8 RGBA, ``flow`` (n, H, W, 2) float16 backward flow posed→rest in pixels, ``visible`` (n, H, W)
bool, ``masks`` (n, 3, H, W) uint8 (eyes, brows, mouth), ``face_box`` / ``rest_face_box`` (n, 4) int32 (x, y, w, h),
``vertices_rest`` / ``vertices_posed`` (n, 44, 3) float32, and ``param_<schema>`` (n, C) float32 for pose5, tha45,
au17, kp and the engine's 3DMM. Shards are written atomically; an interrupted run resumes from the manifest.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import KeyfaceError
from ..io import atomic_write_bytes, atomic_write_text
from ..pixels import quantise
from ..rig import character_schema, convert, get_schema
from .character import FAMILIES, sample_character
from .render import FRAMINGS
from .sample import SCHEMAS, PairRenderer, sample_pose

FORMAT = 1
POSE_SETS = ("all", "expression", "rotation")


@dataclass
class SynthConfig:
    characters: int = 100
    poses_per_character: int = 20
    size: int = 128
    seed: int = 0
    test_fraction: float = 0.1
    characters_per_shard: int = 16
    framing: str = "full"        # "full": upper body, THA placement; "face": the face box fills the image
    poses: str = "all"           # "all", "expression" (head and body at rest) or "rotation" (face at rest)
    project: str | None = None   # schema the expression must be representable in (e.g. au17), or None
    styles: list | None = None   # style families of the training characters (character.FAMILIES); None = ["cel"]
    test_styles: list | None = None  # families of the test characters; None = the same as ``styles``. Holding
    #                                  whole families out (disjoint lists) validates on a style training never saw

    def check(self) -> SynthConfig:
        if self.characters < 1 or self.poses_per_character < 1:
            raise KeyfaceError("need at least one character and one pose per character")
        if not 16 <= self.size <= 4096:
            raise KeyfaceError(f"size must be between 16 and 4096, got {self.size}")
        if not 0 <= self.test_fraction < 1:
            raise KeyfaceError("test fraction must be in [0, 1)")
        if self.framing not in FRAMINGS:
            raise KeyfaceError(f"framing must be one of {', '.join(FRAMINGS)}")
        if self.poses not in POSE_SETS:
            raise KeyfaceError(f"poses must be one of {', '.join(POSE_SETS)}")
        if self.project is not None:
            get_schema(self.project)
        for fam in (self.styles or []) + (self.test_styles or []):
            if fam not in FAMILIES:
                raise KeyfaceError(f"unknown style family {fam!r} (one of {', '.join(FAMILIES)})")
        if self.styles is not None and not self.styles or self.test_styles is not None and not self.test_styles:
            raise KeyfaceError("name at least one style family")
        return self

    def families(self, split: str) -> list[str]:
        train = list(self.styles or ["cel"])
        return list(self.test_styles or train) if split == "test" else train

    def pose(self, rng) -> dict:
        return pose_for(sample_pose(rng), self.poses, self.project)


def pose_for(values: dict, poses: str = "all", project: str | None = None) -> dict:
    """Restrict a sampled pose: ``expression`` keeps head and body at rest, ``rotation`` the face; ``project``
    passes the pose through a schema and back (e.g. au17: bilateral, no gaze, no head motion; pose5: eyes, mouth, head
    pitch and yaw only), so that the schema's values determine the image."""
    if project is not None:
        names = character_schema().names
        vec = np.array([values.get(n, 0.0) for n in names])
        back = convert(convert(vec, "character", project), project, "character")
        values = {n: float(v) for n, v in zip(names, back, strict=True)}
    motion = lambda n: n.startswith(("head_", "body_")) or n == "breathing"  # noqa: E731
    if poses == "expression":
        values = {n: (0.0 if motion(n) else v) for n, v in values.items()}
    elif poses == "rotation":
        values = {n: (v if motion(n) else 0.0) for n, v in values.items()}
    return values


def character_seeds(cfg: SynthConfig) -> dict[str, list[int]]:
    """Character seeds per split: disjoint by construction (the first ⌈N·f⌉ are the test characters)."""
    seeds = [int(s) for s in np.random.default_rng([cfg.seed, 0x5EED]).integers(0, 2**31 - 1, cfg.characters)]
    if len(set(seeds)) != len(seeds):  # astronomically unlikely; keep the promise anyway
        seeds = list(dict.fromkeys(seeds))
    n_test = int(np.ceil(cfg.characters * cfg.test_fraction)) if cfg.characters > 1 else 0
    n_test = min(n_test, cfg.characters - 1)
    return {"test": seeds[:n_test], "train": seeds[n_test:]}


def to_u8(a: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8 (rounded)."""
    return quantise(a)


def family_of(seed: int, families: list[str]) -> str:
    """The style family of a character: one of ``families``, fixed by its seed."""
    return families[int(np.random.default_rng([int(seed), 0xFA31]).integers(len(families)))]


def render_character(seed: int, cfg_dict: dict, split: str = "train") -> dict[str, np.ndarray]:
    """All poses of one character as shard arrays (runs in a worker process)."""
    cfg = SynthConfig(**cfg_dict)
    char = sample_character(seed, family_of(seed, cfg.families(split)))
    pr = PairRenderer(char, (cfg.size, cfg.size), FRAMINGS[cfg.framing])
    rng = np.random.default_rng([cfg.seed, seed, 0xB05E])
    samples = [pr.sample(cfg.pose(rng)) for _ in range(cfg.poses_per_character)]
    u8 = to_u8
    out = {
        "char_seed": np.array([s.char_seed for s in samples], np.int64),
        "values": np.stack([s.values for s in samples]),
        "rest": np.stack([u8(s.rest) for s in samples]),
        "posed": np.stack([u8(s.posed) for s in samples]),
        "flow": np.stack([s.flow for s in samples]).astype(np.float16),
        "visible": np.stack([s.visible for s in samples]),
        "masks": np.stack([u8(s.masks) for s in samples]),
        "face_box": np.array([s.face_box for s in samples], np.int32),
        "rest_face_box": np.array([s.rest_face_box for s in samples], np.int32),
        "vertices_rest": np.stack([s.vertices_rest for s in samples]),
        "vertices_posed": np.stack([s.vertices_posed for s in samples]),
    }
    for name in SCHEMAS:
        out[f"param_{name}"] = np.stack([s.params[name] for s in samples])
    return out


def _shards(seeds: list[int], per: int) -> list[list[int]]:
    return [seeds[i:i + per] for i in range(0, len(seeds), per)]


def write_dataset(out_dir, cfg: SynthConfig, workers: int | None = None, progress=None) -> dict:
    """Render the dataset into ``out_dir`` (resumes: finished shards listed in the manifest are kept)."""
    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    splits = character_seeds(cfg)
    manifest = {"keyface_synth": FORMAT, "config": asdict(cfg), "splits": splits, "shards": {}}
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if {**asdict(SynthConfig()), **old.get("config", {})} != asdict(cfg):  # older manifests lack new keys
            raise KeyfaceError(f"{out} holds a dataset with another configuration ({old.get('config')}); "
                               "choose a new folder")
        manifest["shards"] = old.get("shards", {})
    jobs = [(split, i, group) for split, seeds in splits.items()
            for i, group in enumerate(_shards(seeds, cfg.characters_per_shard))]
    todo = [j for j in jobs if f"{j[0]}/shard_{j[1]:05d}.npz" not in manifest["shards"]]
    workers = workers or max(1, min(len(os.sched_getaffinity(0)), 8))
    total = sum(len(g) for _, _, g in todo)
    done = 0
    with ProcessPoolExecutor(workers) if workers > 1 else _Inline() as pool:
        for split, i, group in todo:
            parts = list(pool.map(render_character, group, [asdict(cfg)] * len(group), [split] * len(group)))
            arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            name = f"{split}/shard_{i:05d}.npz"
            (out / split).mkdir(exist_ok=True)
            atomic_write_bytes(out / name, buf.getvalue())
            manifest["shards"][name] = {"split": split, "characters": group, "samples": int(len(arrays["values"]))}
            atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
            done += len(group)
            if progress:
                progress(done, total)
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return manifest


class _Inline:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, *its):
        return map(fn, *its)


def load_manifest(path) -> dict:
    p = Path(path)
    p = p / "manifest.json" if p.is_dir() else p
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyfaceError(f"no synthetic dataset at {path} (manifest.json missing)") from None
    except json.JSONDecodeError as exc:
        raise KeyfaceError(f"{p} is not valid JSON: {exc}") from None
    if manifest.get("keyface_synth") != FORMAT:
        raise KeyfaceError(f"{p} is not a keyface synthetic dataset (format {FORMAT})")
    return manifest


def _torch_dataset_base():
    import torch.utils.data

    return torch.utils.data.Dataset


class ShardDataset(_torch_dataset_base()):
    """Samples of one split of a written dataset. Items are dicts of numpy arrays (``rest``, ``posed`` uint8 RGBA,
    ``flow`` float32, ``visible``, ``masks``, ``face_box``, ``values``, ``param_*``, …). Shards are loaded lazily and
    the most recent ones kept in memory."""

    def __init__(self, root, split: str = "train", cache_shards: int = 4):
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        if split not in self.manifest["splits"]:
            raise KeyfaceError(f"unknown split {split!r} (have {', '.join(self.manifest['splits'])})")
        self.split = split
        self.shards = sorted(n for n, s in self.manifest["shards"].items() if s["split"] == split)
        self.counts = [self.manifest["shards"][n]["samples"] for n in self.shards]
        self.offsets = np.cumsum([0] + self.counts)
        self._cache: dict[str, dict] = {}
        self._cache_size = cache_shards

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, name: str) -> dict:
        if name not in self._cache:
            with np.load(self.root / name) as z:
                data = {k: z[k] for k in z.files}
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[name] = data
        return self._cache[name]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        data = self._shard(self.shards[k])
        j = i - int(self.offsets[k])
        item = {key: value[j] for key, value in data.items()}
        item["flow"] = item["flow"].astype(np.float32)
        return item


class OnTheFlyDataset(_torch_dataset_base()):
    """Renders samples when asked (deterministic per index): character ``seeds[i // poses]``, pose ``i % poses``.
    Use with a DataLoader's workers to render in parallel."""

    def __init__(self, seeds: list[int], poses_per_character: int, size: int = 128, seed: int = 0):
        self.seeds, self.poses, self.size, self.seed = list(seeds), int(poses_per_character), int(size), int(seed)
        self._renderers: dict[int, PairRenderer] = {}

    def __len__(self) -> int:
        return len(self.seeds) * self.poses

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        cs = self.seeds[i // self.poses]
        if cs not in self._renderers:
            self._renderers = {cs: PairRenderer(sample_character(cs), (self.size, self.size))}
        rng = np.random.default_rng([self.seed, cs, i % self.poses, 0xF1])
        s = self._renderers[cs].sample(sample_pose(rng))
        u8 = to_u8
        item = {"char_seed": np.int64(s.char_seed), "values": s.values, "rest": u8(s.rest), "posed": u8(s.posed),
                "flow": s.flow, "visible": s.visible, "masks": u8(s.masks), "face_box": np.array(s.face_box, np.int32),
                "rest_face_box": np.array(s.rest_face_box, np.int32), "vertices_rest": s.vertices_rest,
                "vertices_posed": s.vertices_posed}
        for name in SCHEMAS:
            item[f"param_{name}"] = s.params[name]
        return item
