"""THA4 — Talking Head(?) Anime 4 (seed 001): student character models (SIREN face morpher + multi-resolution SIREN
body morpher) with a fast evaluator, usable as keyface generators under the model id ``tha4-student:<folder>`` (any
official or keyface-distilled character model folder); folders named in ``$KEYFACE_THA4_MODELS`` are listed by
``keyface models`` and the editors. Importing this package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...errors import KeyfaceError
from ...models import Method, ModelInfo

PREFIX = "tha4-student"
TEACHER = Path(__file__).parent / "weights" / "teacher256"  # keyface's reduced teacher (MODEL_CARD.md there)


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import THA4StudentRuntime

    return THA4StudentRuntime(info.weights, device)


def family(arg: str) -> ModelInfo:
    folder = Path(arg).expanduser()
    missing = [f"{k}_morpher.pt" for k in ("face", "body")
               if not any((folder / f"{k}_morpher{ext}").exists() for ext in (".pt", ".safetensors"))]
    if missing:
        raise KeyfaceError(f"{folder} is not a THA4 character model folder (no {', '.join(missing)})")
    return ModelInfo(f"{PREFIX}:{arg}", "tha4", "tha45", f"THA4 student character model {folder.name}, 512²",
                     folder, load)


def _is_model(folder: Path) -> bool:
    return all(any((folder / f"{k}_morpher{e}").exists() for e in (".pt", ".safetensors")) for k in ("face", "body"))


def models():
    """The character models named by ``$KEYFACE_THA4_MODELS`` (folders separated by the OS path separator: a
    character model folder, or a folder holding several), so that ``keyface models`` and the editors list them."""
    import os

    for entry in filter(None, os.environ.get("KEYFACE_THA4_MODELS", "").split(os.pathsep)):
        root = Path(entry).expanduser()
        candidates = [root] if _is_model(root) else sorted(p for p in root.glob("*") if p.is_dir())
        for folder in candidates:
            if _is_model(folder):
                yield family(str(folder))


def commands(cmds) -> None:
    from .cli import commands as add

    add(cmds)


def _teacher(arg: str, device: str = "cpu"):
    """``tha4-teacher`` (keyface's shipped 256² teacher) or ``tha4-teacher:FOLDER``."""
    from ...weights import pick_device
    from .train_teacher import TeacherPipeline

    return TeacherPipeline(arg or TEACHER, pick_device(device))


def _student_teacher(arg: str, device: str = "cpu"):
    """``tha4-student:FOLDER``: a character model as the teacher of another."""
    from .runtime import THA4StudentRuntime

    if not arg:
        raise KeyfaceError("tha4-student as a teacher needs its folder: tha4-student:FOLDER")
    return THA4StudentRuntime(arg, device).student


METHOD = Method("tha4", "Talking Head(?) Anime 4 (seed 001): student character models, teacher, distillation",
                models=models, families={PREFIX: family}, teachers={"tha4-teacher": _teacher,
                                                                     PREFIX: _student_teacher}, commands=commands)
