"""ATW — Animating Through Warping (seed 004): motion + refinement networks at 128², lifted by ResWarp.

Ships ``atw-au17`` (``weights/atw_au17.safetensors`` with its JSON config and ``MODEL_CARD.md``); listed only when the
weights are present. ``atw-au17:FOLDER`` is a copy adapted to one character by ``keyface adapt`` (:mod:`.adapt`).
Importing this package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...errors import KeyfaceError
from ...models import Method, ModelInfo

PREFIX = "atw-au17"
WEIGHTS = Path(__file__).parent / "weights" / "atw_au17.safetensors"


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import ATWRuntime

    return ATWRuntime(info.weights, device)


def models():
    if WEIGHTS.exists():
        yield ModelInfo("atw-au17", "atw", "au17", "ATW expression generator (17 action units), 128² + ResWarp; "
                        "trained on keyface's synthetic characters", WEIGHTS, load)


def family(arg: str) -> ModelInfo:
    """``atw-au17:FOLDER``: a folder written by ``keyface adapt --model atw-au17``."""
    weights = Path(arg).expanduser() / WEIGHTS.name
    if not weights.is_file() or not weights.with_suffix(".json").is_file():
        raise KeyfaceError(f"{arg} is not an adapted ATW model folder (no {WEIGHTS.name} with its .json): make one "
                           "with keyface adapt --model atw-au17 --image CHARACTER.png --out FOLDER")
    return ModelInfo(f"{PREFIX}:{arg}", "atw", "au17", f"ATW expression generator adapted to one character "
                     f"({Path(arg).name}), 128² + ResWarp", weights, load)


def adapter(info: ModelInfo, device: str = "cpu"):
    from .adapt import ATWAdapter

    return ATWAdapter(info, device)


def commands(cmds) -> None:
    from .cli import commands as add

    add(cmds)


METHOD = Method("atw", "Animating Through Warping (seed 004)", models=models, families={PREFIX: family},
                adapter=adapter, commands=commands)
