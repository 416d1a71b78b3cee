"""ATW — Animating Through Warping (seed 004): motion + refinement networks at 128², lifted by ResWarp.

Registers the shipped model ``atw-au17`` when its weights are present (``weights/atw_au17.safetensors`` with its
JSON config and ``MODEL_CARD.md``). Importing this package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...models import ModelInfo, register

WEIGHTS = Path(__file__).parent / "weights" / "atw_au17.safetensors"


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import ATWRuntime

    return ATWRuntime(info.weights, device)


if WEIGHTS.exists():
    register(ModelInfo("atw-au17", "atw", "au17", "ATW expression generator (17 action units), 128² + ResWarp; "
                       "trained on keyface's synthetic characters", WEIGHTS, load))
