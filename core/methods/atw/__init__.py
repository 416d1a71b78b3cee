"""ATW — Animating Through Warping (seed 004): motion + refinement networks at 128², lifted by ResWarp.

Ships ``atw-au17`` (``weights/atw_au17.safetensors`` with its JSON config and ``MODEL_CARD.md``); listed only when the
weights are present. Importing this package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...models import Method, ModelInfo

WEIGHTS = Path(__file__).parent / "weights" / "atw_au17.safetensors"


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import ATWRuntime

    return ATWRuntime(info.weights, device)


def models():
    if WEIGHTS.exists():
        yield ModelInfo("atw-au17", "atw", "au17", "ATW expression generator (17 action units), 128² + ResWarp; "
                        "trained on keyface's synthetic characters", WEIGHTS, load)


def commands(cmds) -> None:
    from .cli import commands as add

    add(cmds)


METHOD = Method("atw", "Animating Through Warping (seed 004)", models=models, commands=commands)
