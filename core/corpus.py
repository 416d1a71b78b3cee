"""Teacher corpora (``keyface corpus``): training pairs whose targets are another generator's renders.

A fast student (``atw-au17``, ``cptnet-pose5``) learns one engine's drawing style from ``keyface synth``; a teacher
that poses any THA-framed character (THA3) can give it targets on characters the engine cannot draw. A corpus is
written in the synthetic dataset layout (:mod:`keyface.core.synth.dataset`: ``manifest.json`` + ``train/``,
``test/`` shards, written atomically, resumed from the manifest), so every trainer reads it as it reads ``keyface
synth``'s output, and ``--data A,B`` mixes it with an engine dataset (:func:`keyface.core.training.load_split`).

**Inputs.** (a) Paintings in the teacher's framing (THA: 512², head box x 192–320, y 64–192), each as it is and
``augment`` times scaled (0.9–1.1 about the head), shifted (±16 px), mirrored (½) and hue-rotated (0.7); the
paintings named in ``test_paintings`` go, unaugmented, to the test split. (b) ``characters`` synthetic characters of
the engine drawn at 512² in THA's placement, of the style families ``styles`` (train) and ``test_styles`` (test).

**Intents.** The engine's pose sampler restricted like ``keyface synth --poses P --project STUDENT`` (so the student's
schema determines the target), as character-rig values; the teacher is driven by their conversion to its schema
through the character rig (au17 → tha45, pose5 → tha45). Through pose5, 73 % of that sampler's ``expression`` intents
are the rest pose (:func:`balanced_intents`); ``balanced`` > 0 draws moving intents instead, that share of them with a
key expression set on top (what ``keyface adapt`` draws).

**Targets.** What a user sees from the teacher: its render path (:class:`keyface.core.pipeline.FrameJob`: the teacher
at its working region, bias handling and ResWarp lift) at the document's resolution, then cut to the *student's*
working region at its grid by the student's own render-path crop (same box, same resampling), as is the rest image.
So a pair is exactly (what the student will be given, what the teacher would show there).

**Columns** (per sample): ``rest``; ``teacher`` (the teacher's frame, cut); ``posed``, the training target: the
engine's exact posed crop where it has one (synthetic characters: THA3's renders of them are often wrong, e.g. a dark
smudge below a line-drawn mouth) and the teacher's frame elsewhere, with ``has_truth`` saying which — all uint8 RGBA;
``flow`` / ``visible`` the engine's ground truth (zeros / False for paintings, so flow terms skip them); ``values``
character-rig values; ``param_<student schema>``; ``face_box`` in the document; ``source`` (index into the manifest's
``sources``).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .box import THA_HEAD, THA_SIZE, Box
from .errors import KeyfaceError
from .io import atomic_write_bytes, atomic_write_text
from .pixels import quantise

FRAMING = "full"  # synthetic characters are drawn in THA's placement (synth.render.Placement's default)


@dataclass
class CorpusConfig:
    teacher: str = "tha3"
    student: str = "atw-au17"       # whose working region, grid and schema the pairs are cut for
    paintings: list = field(default_factory=list)       # THA-framed images (paths)
    test_paintings: list = field(default_factory=list)  # of those, the ones written to the test split, unaugmented
    augment: int = 4                # augmented copies of each training painting (besides the painting itself)
    characters: int = 0             # synthetic characters
    styles: list | None = None      # their style families (training); None = ["cel"]
    test_styles: list | None = None  # the test characters' families; None = the training ones
    test_fraction: float = 0.1
    poses: str = "expression"       # synth's pose sets: all / expression / rotation
    poses_per_image: int = 16
    balanced: float = 0.0           # > 0: moving intents, that share with a key expression (balanced_intents)
    images_per_shard: int = 4
    seed: int = 0

    def check(self) -> CorpusConfig:
        if self.poses_per_image < 1 or self.images_per_shard < 1 or self.augment < 0 or self.characters < 0:
            raise KeyfaceError("poses per image and images per shard must be ≥ 1, augment and characters ≥ 0")
        if not 0 <= self.balanced <= 1:
            raise KeyfaceError(f"the balanced share must be in [0, 1], not {self.balanced}")
        missing = [p for p in self.paintings if not Path(p).is_file()]
        if missing:
            raise KeyfaceError(f"no such painting: {', '.join(missing)}")
        strays = [p for p in self.test_paintings if p not in self.paintings]
        if strays:
            raise KeyfaceError(f"test paintings must also be among the paintings: {', '.join(strays)}")
        if not self.paintings and not self.characters:
            raise KeyfaceError("a corpus needs paintings or synthetic characters (--paintings, --characters)")
        self.synth_config().check()  # pose set and style families
        return self

    def synth_config(self):
        from .synth.dataset import SynthConfig

        return SynthConfig(characters=max(self.characters, 1), poses_per_character=self.poses_per_image,
                           seed=self.seed, test_fraction=self.test_fraction, framing=FRAMING, poses=self.poses,
                           styles=self.styles, test_styles=self.test_styles)


# ------------------------------------------------------------------------------------------------- inputs


def augment_painting(painting: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    """A THA-framed painting (square straight RGBA float32 [0, 1]) scaled about its head box, shifted, maybe mirrored
    and hue-rotated, in a frame of the same size: (image, its face box). Colour is resampled premultiplied, so edges
    against transparency keep no dark fringe."""
    import cv2

    n = painting.shape[0]
    hx, hy, hs = (v * n / THA_SIZE for v in THA_HEAD[:3])
    cx, cy = hx + hs / 2, hy + hs / 2
    s = float(rng.uniform(0.9, 1.1))
    dx, dy = (float(v) for v in rng.uniform(-16, 16, 2) * n / THA_SIZE)
    img = painting
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
        cx = n - cx
    if rng.random() < 0.7:
        hsv = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(0, 360)) % 360
        img = np.concatenate([cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), img[..., 3:]], axis=2)
    pre = np.concatenate([img[..., :3] * img[..., 3:], img[..., 3:]], axis=2)
    m = np.array([[s, 0, (1 - s) * cx + dx], [0, s, (1 - s) * cy + dy]], np.float32)
    pre = cv2.warpAffine(pre, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = pre[..., 3:]
    rgb = np.where(a > 1e-6, pre[..., :3] / np.maximum(a, 1e-6), 0)
    out = np.clip(np.concatenate([rgb, a], axis=2), 0, 1).astype(np.float32)
    side = hs * s
    x, y = cx + dx - side / 2, cy + dy - side / 2
    return out, Box(int(round(x)), int(round(y)), int(round(side)), int(round(side)))


def _sources(cfg: CorpusConfig) -> tuple[list[dict], dict[str, list[int]]]:
    """Every input of the corpus: {"kind": "painting", "path", "variant", "split"} or {"kind": "character", "seed",
    "family", "split"}; and the synthetic seeds of each split (the dataset manifest's ``splits``)."""
    from .synth.dataset import character_seeds, family_of

    items = []
    for path in cfg.paintings:
        held = path in cfg.test_paintings
        for v in range(1 if held else 1 + cfg.augment):
            items.append({"kind": "painting", "path": str(path), "variant": v, "split": "test" if held else "train"})
    splits = {"train": [], "test": []}
    if cfg.characters:
        scfg = cfg.synth_config()
        splits = character_seeds(scfg)
        for split, seeds in splits.items():
            items += [{"kind": "character", "seed": s, "family": family_of(s, scfg.families(split)), "split": split}
                      for s in seeds]
    return items, splits


def _document(item: dict, cfg: CorpusConfig, index: int):
    """(document straight RGBA float32, face box, the engine's pair renderer or None)."""
    from .facebox import read_paintings

    if item["kind"] == "painting":
        painting = read_paintings([item["path"]])[0]
        if item["variant"] == 0:
            n = painting.shape[0]
            return painting, Box(*(int(round(v * n / THA_SIZE)) for v in THA_HEAD)), None
        return (*augment_painting(painting, np.random.default_rng([cfg.seed, index, 0xA06])), None)
    from .synth.character import sample_character
    from .synth.face import Pose
    from .synth.render import FRAMINGS, REST
    from .synth.sample import PairRenderer

    char = sample_character(item["seed"], item["family"])
    pr = PairRenderer(char, (THA_SIZE, THA_SIZE), FRAMINGS[FRAMING])
    return pr.rest.image.astype(np.float32), Box(*pr.face_box(Pose(dict(REST)))), char


def crop_placement(box: Box):
    """The engine placement whose render at the box's grid equals the THA-placed 512² render cut to ``box``."""
    from .synth.render import FRAMINGS

    full = FRAMINGS[FRAMING]
    ox, oy = full.origin(THA_SIZE, THA_SIZE)
    unit = full.unit(THA_SIZE, THA_SIZE)
    return type(full)(center=((ox - box.x) / box.w, (oy - box.y) / box.h), head=2 * unit / box.w)


# ------------------------------------------------------------------------------------------------- pairs


def sample_intents(rng: np.random.Generator, n: int, poses: str, schema: str, moving: bool = False) -> np.ndarray:
    """``n`` intents as character-rig values (n, 25): the engine's pose sampler restricted to the pose set and to what
    ``schema`` represents (as ``keyface synth --poses P --project SCHEMA``). ``moving``: redraw intents that are the
    schema's rest pose (evaluations: the render path returns the source itself there)."""
    from .rig import character_schema, convert, get_schema
    from .synth.dataset import pose_for
    from .synth.sample import sample_pose

    names, rest = character_schema().names, get_schema(schema).defaults
    out = []
    for _ in range(100 * n):
        v = np.array([pose_for(sample_pose(rng), poses, schema)[k] for k in names], np.float32)
        if not moving or not np.allclose(convert(v, "character", schema), rest, atol=1e-6):
            out.append(v)
        if len(out) == n:
            return np.stack(out)
    raise KeyfaceError(f"the {poses} pose set moves nothing {schema} represents")


KEY_ACTIONS = (("blink_left", "blink_right"), ("blink_left",), ("blink_right",), ("mouth_open",), ("mouth_smile",))


def balanced_intents(rng: np.random.Generator, n: int, poses: str, schema: str, share: float = 0.5) -> np.ndarray:
    """``n`` moving intents (:func:`sample_intents`), a ``share`` of them with a key expression the schema represents
    set on top (both eyes closing, a wink, the mouth opening, a smile: one of them, a second with probability 0.3, at
    full intensity with probability 0.35, else uniform in [0.3, 1]).

    Why (per-character adaptation): the engine's sampler spreads its expressions over actions a small schema does not
    represent, so through pose5 73 % of its ``expression`` intents are the rest pose, 6.5 % close an eye (0.5 % both)
    and 7.5 % open the mouth by more than half (measured on 400 draws); a few hundred teacher pairs then hold a
    handful of blinks, and the adapted model's lids did not close (2026-12-02, CPTNet and ATW on the sample
    paintings)."""
    from .rig import character_schema, convert, represents
    from .synth.dataset import pose_for

    names = character_schema().names
    actions = [a for a in KEY_ACTIONS if represents(schema, dict.fromkeys(a, 1.0))]
    out = sample_intents(rng, n, poses, schema, moving=True)
    for i in np.flatnonzero(rng.random(n) < share) if actions else ():
        for _ in range(1 + (rng.random() < 0.3)):
            x = 1.0 if rng.random() < 0.35 else float(rng.uniform(0.3, 1))
            for name in actions[rng.integers(len(actions))]:
                out[i, names.index(name)] = x
    # through the schema and back, as sample_intents' intents (what the schema represents determines the image)
    back = convert(convert(out, "character", schema), schema, "character")
    return np.stack([[pose_for(dict(zip(names, b.tolist(), strict=True)), poses)[k] for k in names]
                     for b in back]).astype(np.float32)


def student_crop(image: np.ndarray, face: Box, student) -> tuple[np.ndarray, Box]:
    """What the student's render path gives the student for ``image`` (its working region at its grid, uint8 straight
    RGBA), and that region."""
    from .pipeline import FrameJob

    job = FrameJob.prepare(image, student, face)
    return quantise(job.lifter.low_input()), job.box


def teacher_frames(doc: np.ndarray, face: Box, values: np.ndarray, teacher) -> list[np.ndarray]:
    """The teacher's (or any generator's) render-path frames (document resolution) for intents (n, 25) in
    character-rig values, converted to its schema, in its batch size."""
    from .pipeline import FrameJob
    from .rig import convert

    job, bs = FrameJob.prepare(doc, teacher, face), max(1, teacher.batch_size)
    driven = convert(values, "character", teacher.schema)
    return [f for j in range(0, len(driven), bs) for f in job.frames(driven[j:j + bs])]


def teacher_pairs(doc: np.ndarray, face: Box, values: np.ndarray, teacher, student, char=None) -> dict:
    """Pairs for intents (n, 25) on one document: the student's rest crop, the teacher's frame cut the same way, and —
    for an engine character ``char`` — the engine's exact target, flow and visibility at that crop."""
    from .rig import character_schema, convert
    from .synth.sample import PairRenderer

    rest, box = student_crop(doc, face, student)
    posed = np.stack([student_crop(f, face, student)[0] for f in teacher_frames(doc, face, values, teacher)])
    n, (h, w) = len(values), rest.shape[:2]
    cols = {"rest": np.repeat(rest[None], n, 0), "teacher": posed, "posed": posed.copy(),
            "has_truth": np.zeros(n, bool), "flow": np.zeros((n, h, w, 2), np.float16),
            "visible": np.zeros((n, h, w), bool), "values": values.astype(np.float32),
            f"param_{student.schema}": convert(values, "character", student.schema).astype(np.float32),
            "face_box": np.repeat(np.array([tuple(face)], np.int32), n, 0)}
    if char is not None:  # the engine's exact target at the student's crop
        names = character_schema().names
        pr = PairRenderer(char, (h, w), crop_placement(box))
        for i, v in enumerate(values):
            s = pr.sample(dict(zip(names, v.tolist(), strict=True)))
            cols["posed"][i] = quantise(s.posed)
            cols["flow"][i], cols["visible"][i] = s.flow.astype(np.float16), s.visible
        cols["has_truth"][:] = True
    return cols


# ------------------------------------------------------------------------------------------------- writing


class CorpusWriter:
    """Writes a corpus shard by shard (resumable); ``teacher`` and ``student`` are loaded generators."""

    def __init__(self, cfg: CorpusConfig, out, teacher, student):
        from .rig import get_schema

        self.cfg, self.out = cfg.check(), Path(out)
        self.teacher, self.student = teacher, student
        self.schema = get_schema(student.schema)
        self.items, self.splits = _sources(cfg)

    def manifest(self) -> dict:
        path = self.out / "manifest.json"
        from .synth.dataset import FORMAT  # the synthetic dataset's format: the same reader

        fresh = {"keyface_synth": FORMAT, "kind": "teacher", "config": asdict(self.cfg), "splits": self.splits,
                 "sources": self.items, "shards": {}, "seconds": 0.0}
        if not path.exists():
            return fresh
        old = json.loads(path.read_text(encoding="utf-8"))
        # a corpus written before a field existed was written with that field's default
        if {**asdict(CorpusConfig()), **old.get("config", {})} != asdict(self.cfg):
            raise KeyfaceError(f"{self.out} holds a corpus with another configuration; choose a new folder")
        return {**fresh, "shards": old.get("shards", {}), "seconds": old.get("seconds", 0.0)}

    def groups(self) -> list[tuple[str, int, list[int]]]:
        per = self.cfg.images_per_shard
        out = []
        for split in ("train", "test"):
            idx = [i for i, it in enumerate(self.items) if it["split"] == split]
            out += [(split, k, idx[j:j + per]) for k, j in enumerate(range(0, len(idx), per))]
        return out

    def item(self, index: int) -> dict[str, np.ndarray]:
        """All poses of one input as shard columns."""
        cfg, it = self.cfg, self.items[index]
        doc, face, char = _document(it, cfg, index)
        rng = np.random.default_rng([cfg.seed, index, 0x7EA])
        if cfg.balanced > 0:
            values = balanced_intents(rng, cfg.poses_per_image, cfg.poses, self.schema.name, cfg.balanced)
        else:
            values = sample_intents(rng, cfg.poses_per_image, cfg.poses, self.schema.name)
        cols = teacher_pairs(doc, face, values, self.teacher, self.student, char)
        cols["source"] = np.full(len(values), index, np.int32)
        cols["char_seed"] = np.full(len(values), it.get("seed", -1), np.int64)
        return cols

    def write(self, progress: Callable | None = None, should_stop: Callable = lambda: False) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = self.manifest()
        todo = [g for g in self.groups() if f"{g[0]}/shard_{g[1]:05d}.npz" not in manifest["shards"]]
        total, done = sum(len(g) for _, _, g in todo), 0
        for split, k, group in todo:
            if should_stop():
                break
            t0 = time.perf_counter()
            parts = []
            for index in group:
                parts.append(self.item(index))
                done += 1
                if progress:
                    progress(done, total)
            arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            name = f"{split}/shard_{k:05d}.npz"
            (self.out / split).mkdir(exist_ok=True)
            atomic_write_bytes(self.out / name, buf.getvalue())
            manifest["shards"][name] = {"split": split, "sources": group, "samples": int(len(arrays["values"]))}
            manifest["seconds"] = round(manifest["seconds"] + time.perf_counter() - t0, 1)
            atomic_write_text(self.out / "manifest.json", json.dumps(manifest, indent=1))
        atomic_write_text(self.out / "manifest.json", json.dumps(manifest, indent=1))
        return manifest


def write_corpus(cfg: CorpusConfig, out, device: str = "cpu", progress=None, should_stop=lambda: False) -> dict:
    from .models import get_model

    teacher = get_model(cfg.teacher).load(device)
    student = get_model(cfg.student).load(device)
    return CorpusWriter(cfg, out, teacher, student).write(progress, should_stop)
