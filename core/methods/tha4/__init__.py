"""THA4 — Talking Head(?) Anime 4 (seed 001): student character models (SIREN face morpher + multi-resolution SIREN
body morpher) with a fast evaluator, usable as keyface generators under the model id ``tha4-student:<folder>`` (any
official or keyface-distilled character model folder). Importing this package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...errors import KeyfaceError
from ...models import ModelInfo, register_family

PREFIX = "tha4-student"


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


register_family(PREFIX, family)
