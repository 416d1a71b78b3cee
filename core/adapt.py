"""Per-character adaptation (``keyface adapt``): a fast model fine-tuned on a teacher's renders of one character.

THA4's idea (seed 001: distil a slow general poser into a small network for one character) applied to keyface's fast
generators: the teacher (THA3) poses *this* character for intents drawn in the student's schema, and a copy of the
student is fine-tuned on those pairs, cut exactly as its render path cuts the document
(:func:`keyface.core.corpus.teacher_pairs`). The result is a model folder, used as ``<model>:<folder>``
(e.g. ``atw-au17:DIR``) wherever a model id is taken.

**Budget.** ``minutes`` of wall time in all: the teacher renders pairs for at most ``render_share`` of it (at least
:data:`MIN_PAIRS` pairs, never more than ``max_pairs``), the fine-tuning takes what is left, and the evaluation after
it renders :data:`EVAL_INTENTS` more intents with both (not counted in the budget). Cancel (``should_stop``) stops the
phase running; a cancelled fine-tuning still saves what it learnt so far, a cancel during rendering writes nothing.

**Evaluation** (in the folder's JSON and model card): on intents the fine-tuning never saw, PSNR against the teacher's
frames through the full render path, over the head region — the face box grown by an eighth of its side on every
side (brows to chin with a margin; where the expression generators work) — for the adapted model and for the model it
started from; and frames per second of the teacher and of the adapted model, measured in the same run.

A method offers adaptation by declaring ``adapter`` in its :class:`~keyface.core.models.Method`: ``adapter(info,
device)`` → an object with ``poses`` (the synth pose set its intents come from; optionally ``render_poses``, pose sets
the teacher's chunks cycle through instead, e.g. CPTNet's ("all", "expression")), ``family`` (the model-id prefix its
folders load under, e.g. ``atw-au17``), ``fit(pairs, seconds, progress,
should_stop) → dict`` (pairs: :func:`~keyface.core.corpus.teacher_pairs`' columns), ``save(folder, record)`` and
``runtime()`` (the adapted generator, for the evaluation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .box import Box
from .errors import KeyfaceError
from .io import atomic_write_text

MIN_PAIRS = 16
EVAL_INTENTS = 8
RECORD = "adapt.json"


def head_region(face: Box, width: int, height: int) -> tuple[slice, slice]:
    """The face box grown by an eighth of its side on each side, inside the document."""
    g = face.w / 8
    x0, y0 = max(0, int(round(face.x - g))), max(0, int(round(face.y - g)))
    x1, y1 = min(width, int(round(face.x + face.w + g))), min(height, int(round(face.y + face.h + g)))
    if x1 <= x0 or y1 <= y0:
        raise KeyfaceError(f"the face box {tuple(face)} lies outside the {width}×{height} document")
    return slice(y0, y1), slice(x0, x1)


def region_psnr(a: np.ndarray, b: np.ndarray, region) -> float:
    """PSNR (dB) of two straight RGBA float frames over ``region``, composited over mid grey (as keyface's metrics)."""
    from .metrics import psnr
    from .pixels import over_grey

    return float(psnr(over_grey(a[region]), over_grey(b[region])))


def once_per_image(fn: Callable, images):
    """``fn(images)`` computed once per distinct image of the batch and repeated for its copies: the same values and
    gradients as the whole batch through a network that treats each sample alone (instance norm, no batch norm), at
    the cost of the distinct images. An adaptation's batch holds one rest image (two where it mirrors), so the
    bias-cancelling pass at the rest pose — half of every step before — costs one or two samples instead of eight."""
    import torch

    distinct, which = torch.unique(images.flatten(1), dim=0, return_inverse=True)
    return fn(distinct.view(-1, *images.shape[1:]))[which]


def adaptable_models() -> list:
    """The installed models whose method offers adaptation (the editors' *Adapt to this character* list)."""
    from .models import available_models, methods

    offer = {m.name for m in methods() if m.adapter is not None}
    return [m for m in available_models() if m.method in offer]


def teacher_models() -> list:
    """Installed models that can teach: THA's 45-parameter posers (any THA-framed character)."""
    from .models import available_models

    return [m for m in available_models() if m.schema_name == "tha45"]


def adapter_for(info, device: str = "cpu"):
    from .models import methods

    method = {m.name: m for m in methods()}.get(info.method)
    if method is None or method.adapter is None:
        raise KeyfaceError(f"model {info.id} cannot be adapted to a character (its method {info.method} offers no "
                           "adaptation)")
    return method.adapter(info, device)


def adapt(model: str, image: np.ndarray, out, *, box=None, teacher: str = "tha3", minutes: float = 10.0,
          render_share: float = 0.4, max_pairs: int = 512, seed: int = 0, device: str = "cpu",
          progress: Callable | None = None, should_stop: Callable = lambda: False, source_name: str = "") -> dict:
    """Adapt ``model`` to the character in ``image`` (straight RGBA or RGB, any depth); write the folder ``out``.
    ``progress(phase, done, total)`` with phase "render", "fit" or "evaluate". Returns the record written."""
    from .corpus import balanced_intents, teacher_pairs
    from .models import get_model
    from .pixels import to_unit, with_alpha

    if not minutes > 0:
        raise KeyfaceError(f"--minutes must be positive, got {minutes}")
    info, teacher_info = get_model(model), get_model(teacher)
    adapter = adapter_for(info, device)
    teacher_rt = teacher_info.load(device)
    student_rt = info.load(device)
    doc = with_alpha(to_unit(image)).astype(np.float32)
    face = Box.of(box) if box is not None else teacher_rt.default_face_box(doc)
    region = head_region(face, doc.shape[1], doc.shape[0])
    report = progress or (lambda *a: None)
    budget, t0 = minutes * 60.0, time.perf_counter()
    rng = np.random.default_rng([seed, 0xADA])

    # 1. the teacher's pairs, a chunk at a time, until the render share of the budget is spent
    chunk, parts, n = max(1, teacher_rt.batch_size) * 2, [], 0
    pose_sets = getattr(adapter, "render_poses", (adapter.poses,))
    while n < max_pairs:
        if should_stop():
            raise KeyfaceError("adaptation cancelled while the teacher was rendering; nothing was written")
        values = balanced_intents(rng, min(chunk, max_pairs - n), pose_sets[len(parts) % len(pose_sets)],
                                  student_rt.schema)
        parts.append(teacher_pairs(doc, face, values, teacher_rt, student_rt))
        n += len(values)
        report("render", n, max_pairs)
        spent = time.perf_counter() - t0
        if n >= MIN_PAIRS and spent + spent / n * chunk > render_share * budget:
            break
    pairs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    render_seconds = time.perf_counter() - t0

    # 2. fine-tuning for what is left of the budget
    fit = adapter.fit(pairs, max(0.0, budget - (time.perf_counter() - t0)),
                      lambda done, total, logs=None: report("fit", done, total), should_stop)

    # 3. evaluation on intents the fine-tuning never saw, through the full render path
    report("evaluate", 0, EVAL_INTENTS)
    scores = measure(doc, face, teacher_rt, student_rt, adapter.runtime(), adapter.poses, seed)
    report("evaluate", EVAL_INTENTS, EVAL_INTENTS)

    out = Path(out)
    record = {
        "model_id": f"{adapter.family}:{out}", "base_model": info.id, "teacher": teacher_info.id,
        "source": source_name, "face_box": list(face),
        "head_region": [region[1].start, region[0].start, region[1].stop - region[1].start,
                        region[0].stop - region[0].start],
        "minutes": minutes, "pairs": int(len(pairs["values"])), "render_seconds": round(render_seconds, 1),
        "fit": fit, "cancelled": bool(fit.get("cancelled")), "evaluation": scores}
    out.mkdir(parents=True, exist_ok=True)
    adapter.save(out, record)
    atomic_write_text(out / RECORD, json.dumps(record, indent=1))
    atomic_write_text(out / "MODEL_CARD.md", model_card(record))
    return record


def measure(doc, face: Box, teacher_rt, student_rt, adapted_rt, poses: str, seed: int = 0) -> dict:
    """Head-region PSNR against the teacher's render-path frames on :data:`EVAL_INTENTS` intents (not the training
    ones) for the adapted model, the model it started from and the unchanged document; frames per second of each
    render path over the same intents after one warm-up frame (the set-up and the rest pose are not per-frame costs),
    and the adapted model's speed over the teacher's."""
    from .corpus import sample_intents
    from .pipeline import FrameJob
    from .rig import convert

    region = head_region(face, doc.shape[1], doc.shape[0])
    values = sample_intents(np.random.default_rng([seed, 0xE7A]), EVAL_INTENTS, poses, student_rt.schema, moving=True)

    def timed(rt):
        driven = convert(values, "character", rt.schema).astype(np.float32)
        job, bs = FrameJob.prepare(doc, rt, face), max(1, rt.batch_size)
        job.frames(driven[:1])
        t = time.perf_counter()
        frames = [f for j in range(0, len(driven), bs) for f in job.frames(driven[j:j + bs])]
        return frames, len(driven) / (time.perf_counter() - t)

    truth, teacher_fps = timed(teacher_rt)
    out = {"intents": EVAL_INTENTS, "teacher_frames_per_second": teacher_fps}
    for name, rt in (("adapted", adapted_rt), ("base", student_rt)):
        frames, fps = timed(rt)
        out[name] = {"psnr_vs_teacher": float(np.mean([region_psnr(f, g, region) for f, g in zip(frames, truth,
                                                                                               strict=True)])),
                     "frames_per_second": fps}
    out["identity"] = {"psnr_vs_teacher": float(np.mean([region_psnr(doc, g, region) for g in truth]))}
    out["speedup"] = out["adapted"]["frames_per_second"] / teacher_fps
    return out


def model_card(r: dict) -> str:
    e = r["evaluation"]
    return f"""# {r['base_model']} adapted to {r['source'] or 'one character'}

Made by `keyface adapt --model {r['base_model']} --teacher {r['teacher']} --minutes {r['minutes']:g}` (face box
{tuple(r['face_box'])}).

- **Data**: {r['pairs']} pairs of this character rendered by {r['teacher']} ({r['render_seconds']:.0f} s), intents
  drawn by the engine's pose sampler in the model's schema, cut as the render path cuts the document.
- **Fine-tuning**: {r['fit'].get('steps', 0)} steps from {r['base_model']} in {r['fit'].get('seconds', 0):.0f} s
  (batch {r['fit'].get('batch', '?')}, lr {r['fit'].get('lr', '?')}){' — cancelled' if r['cancelled'] else ''}.
- **Measured** on {e['intents']} intents the fine-tuning never saw, through the full render path, head region (face
  box grown by 1/8 a side): PSNR against {r['teacher']} **{e['adapted']['psnr_vs_teacher']:.2f} dB** adapted,
  {e['base']['psnr_vs_teacher']:.2f} dB before adaptation, {e['identity']['psnr_vs_teacher']:.2f} dB for the unchanged
  image. Speed: {e['adapted']['frames_per_second']:.2f} frames/s adapted, {e['teacher_frames_per_second']:.2f}
  frames/s {r['teacher']} ({e['speedup']:.1f}×), same machine, same run.
- **Limits**: it knows only this character at this framing; other images need their own adaptation. It reproduces
  the teacher, including the teacher's own mistakes.
"""
