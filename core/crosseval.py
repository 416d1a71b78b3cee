"""Do models work on characters they never saw? (``keyface eval styles``.)

Two tables, per model and action, every number through the full render path (:class:`keyface.core.pipeline.FrameJob`)
on 512² documents in THA's framing, over the head region (:func:`keyface.core.adapt.head_region`):

* **held-out styles** (exact ground truth): characters of the engine drawn in the style families named (hold out the
  ones a model was not trained on); the gain in dB of the model's frame over the unchanged image, both against the
  engine's exact posed render, averaged over characters;
* **paintings** (no ground truth): the PSNR of the model's frame against the teacher's (THA3) for the same intent,
  next to the unchanged image's.

An action is run by a model only when the model's schema represents it (the action's character-rig values survive the
round trip through the schema): atw-au17 has no head turn, cptnet-pose5 no smile.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .box import Box
from .errors import KeyfaceError

ACTIONS = {
    "blink": {"blink_left": 1.0, "blink_right": 1.0},
    "mouth open": {"mouth_open": 1.0},
    "smile": {"mouth_smile": 1.0},
    "head turn 15°": {"head_yaw": 15.0},
}


def action_values(action: str) -> np.ndarray:
    from .rig import character_schema

    return character_schema().vector(ACTIONS[action]).astype(np.float32)


def supports(schema: str, action: str) -> bool:
    """Whether ``schema`` represents the action (:func:`keyface.core.rig.represents`)."""
    from .rig import represents

    return represents(schema, ACTIONS[action])


def _frames(doc, face, runtime, values):
    """``runtime``'s render-path frames for intents given as character-rig values."""
    from .corpus import teacher_frames

    return teacher_frames(doc, face, np.stack(values), runtime)


def style_table(models: dict, families: list[str], characters: int, seed: int = 0,
                progress: Callable | None = None) -> dict:
    """{model id: {action: {"gain_db", "psnr", "psnr_identity", "characters"}}} on engine characters of ``families``
    (``characters`` of each), seeds from ``seed`` (keep them apart from training seeds: the synth datasets draw theirs
    from a hash; these are small consecutive integers offset by 10⁹)."""
    from .adapt import head_region, region_psnr
    from .rig import character_schema
    from .synth.character import sample_character
    from .synth.face import Pose
    from .synth.render import FRAMINGS, REST
    from .synth.sample import PairRenderer

    names = character_schema().names
    chars = [(10 ** 9 + seed * 1000 + i, fam) for fam in families for i in range(characters)]
    rows = {m: {a: {"psnr": [], "psnr_identity": []} for a in ACTIONS if supports(rt.schema, a)}
            for m, rt in models.items()}
    for k, (s, fam) in enumerate(chars):
        pr = PairRenderer(sample_character(s, fam), (512, 512), FRAMINGS["full"])
        doc = pr.rest.image.astype(np.float32)
        face = Box(*pr.face_box(Pose(dict(REST))))
        region = head_region(face, 512, 512)
        truth = {a: pr.renderer.render({**REST, **dict(zip(names, action_values(a).tolist(), strict=True))}).image
                 for a in ACTIONS}
        for m, rt in models.items():
            acts = list(rows[m])
            for a, frame in zip(acts, _frames(doc, face, rt, [action_values(a) for a in acts]), strict=True):
                rows[m][a]["psnr"].append(region_psnr(frame, truth[a], region))
                rows[m][a]["psnr_identity"].append(region_psnr(doc, truth[a], region))
        if progress:
            progress(k + 1, len(chars))
    return {m: {a: {"psnr": float(np.mean(r["psnr"])), "psnr_identity": float(np.mean(r["psnr_identity"])),
                    "gain_db": float(np.mean(r["psnr"]) - np.mean(r["psnr_identity"])), "characters": len(chars)}
                for a, r in acts.items()} for m, acts in rows.items()}


def painting_table(models: dict, teacher, paintings: list, progress: Callable | None = None,
                   sheet: list | None = None) -> dict:
    """{model id: {action: {"psnr_vs_teacher", "psnr_identity_vs_teacher", "paintings"}}} on THA-framed paintings
    (paths); the face box is THA's. ``sheet``: a list that receives one contact-sheet row per painting (uint8 RGB over
    grey, head regions): the painting, then for each action the teacher's frame and each model's (grey where a model
    lacks the action)."""
    from .adapt import head_region, region_psnr
    from .box import THA_HEAD, THA_SIZE
    from .facebox import read_paintings

    acts_all = [a for a in ACTIONS if supports(teacher.schema, a)]
    rows = {m: {a: {"ours": [], "identity": []} for a in acts_all if supports(rt.schema, a)}
            for m, rt in models.items()}
    for k, path in enumerate(paintings):
        doc = read_paintings([path])[0]
        n = doc.shape[0]
        face = Box(*(int(round(v * n / THA_SIZE)) for v in THA_HEAD))
        region = head_region(face, n, n)
        truth = dict(zip(acts_all, _frames(doc, face, teacher, [action_values(a) for a in acts_all]), strict=True))
        ours = {}
        for m, rt in models.items():
            acts = list(rows[m])
            for a, frame in zip(acts, _frames(doc, face, rt, [action_values(a) for a in acts]), strict=True):
                rows[m][a]["ours"].append(region_psnr(frame, truth[a], region))
                rows[m][a]["identity"].append(region_psnr(doc, truth[a], region))
                ours[m, a] = frame
        if sheet is not None:
            from .pixels import over_grey, quantise

            def tile(im, region=region):
                return quantise(over_grey(im[region]))

            blank = np.full_like(tile(doc), 128)
            sheet.append(np.concatenate([tile(doc)] + [t for a in acts_all for t in [tile(truth[a])] + [
                tile(ours[m, a]) if (m, a) in ours else blank for m in models]], axis=1))
        if progress:
            progress(k + 1, len(paintings))
    return {m: {a: {"psnr_vs_teacher": float(np.mean(r["ours"])),
                    "psnr_identity_vs_teacher": float(np.mean(r["identity"])), "paintings": len(paintings)}
                for a, r in acts.items()} for m, acts in rows.items()}


def format_tables(styles: dict | None, paintings: dict | None, families, teacher: str) -> str:
    lines = []
    w = max([28] + [len(m) + 2 for table in (styles, paintings) if table for m in table])  # model ids with folders
    if styles:
        lines += [f"held-out styles ({', '.join(families)}): head-region PSNR against the engine's exact render",
                  f"{'model':<{w}}{'action':<16}{'PSNR':>8}{'identity':>10}{'gain dB':>9}"]
        for m, acts in styles.items():
            lines += [f"{m:<{w}}{a:<16}{r['psnr']:8.2f}{r['psnr_identity']:10.2f}{r['gain_db']:+9.2f}"
                      for a, r in acts.items()]
    if paintings:
        lines += ["", f"paintings: head-region PSNR against {teacher} for the same intent",
                  f"{'model':<{w}}{'action':<16}{'PSNR':>8}{'identity':>10}"]
        for m, acts in paintings.items():
            lines += [f"{m:<{w}}{a:<16}{r['psnr_vs_teacher']:8.2f}{r['psnr_identity_vs_teacher']:10.2f}"
                      for a, r in acts.items()]
    if not lines:
        raise KeyfaceError("nothing to evaluate: name style families or paintings")
    return "\n".join(lines)
