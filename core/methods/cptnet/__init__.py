"""CPTNet — Cascade Pose Transform Network (seed 000): face stage (mask generator) + head stage (cascaded mask branch,
grid branch, fusion) on head crops (the paper: 256²; the shipped model: 128²) driven by pose5, lifted by ResWarp with
the grid branch's field and the fusion mask. Without a box, the head crop is found around the detected face box
(:func:`keyface.core.methods.cptnet.runtime.head_box`).

Registers ``cptnet-pose5`` when shipped weights are present (``weights/cptnet_pose5.safetensors`` with its JSON config
and ``MODEL_CARD.md``). Importing this package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...models import ModelInfo, register

WEIGHTS = Path(__file__).parent / "weights" / "cptnet_pose5.safetensors"


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import CPTNetRuntime

    return CPTNetRuntime(info.weights, device)


if WEIGHTS.exists():
    register(ModelInfo("cptnet-pose5", "cptnet", "pose5", "CPTNet head and expression generator (pose5: eyes, mouth, "
                       "head pitch and yaw) on a head crop, 128² + ResWarp; trained on keyface's synthetic characters",
                       WEIGHTS, load))
