"""CPTNet — Cascade Pose Transform Network (seed 000): face stage (mask generator) + head stage (cascaded mask branch,
grid branch, fusion) on head crops (the paper: 256²; the shipped model: 128²) driven by its own schema ``pose5``
(:mod:`.schema`), lifted by ResWarp with the grid branch's field and the fusion mask. Its working region is the head
crop around the face box (:func:`keyface.core.box.head_crop`).

Ships ``cptnet-pose5`` (``weights/cptnet_pose5.safetensors`` with its JSON config and ``MODEL_CARD.md``); listed only
when the weights are present. ``cptnet-pose5:WEIGHTS`` is any other CPTNet the user trained: the ``.safetensors``
``keyface train cptnet`` wrote (``RUN/generator.safetensors``, ``RUN/best.safetensors``, with the JSON beside it) or its
run folder (its final ``generator.safetensors``), or a folder ``keyface adapt --model cptnet-pose5`` wrote
(:mod:`.adapt`). Importing this package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...errors import KeyfaceError
from ...models import Method, ModelInfo
from .schema import pose5, pose5_converter

PREFIX = "cptnet-pose5"
WEIGHTS = Path(__file__).parent / "weights" / "cptnet_pose5.safetensors"


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import CPTNetRuntime

    return CPTNetRuntime(info.weights, device)


def models():
    if WEIGHTS.exists():
        yield ModelInfo("cptnet-pose5", "cptnet", "pose5", "CPTNet head and expression generator (pose5: eyes, mouth, "
                        "head pitch and yaw) on a head crop, 128² + ResWarp; trained on keyface's synthetic characters",
                        WEIGHTS, load)


def family(arg: str) -> ModelInfo:
    """``cptnet-pose5:WEIGHTS``: a trained generator's ``.safetensors`` (with its JSON), or a run folder."""
    path = Path(arg).expanduser()
    weights = path / "generator.safetensors" if path.is_dir() else path
    if weights.suffix != ".safetensors" or not weights.is_file() or not weights.with_suffix(".json").is_file():
        raise KeyfaceError(f"{arg} is not CPTNet weights (a .safetensors with its .json, or a run folder of keyface "
                           "train cptnet holding generator.safetensors)")
    return ModelInfo(f"{PREFIX}:{arg}", "cptnet", "pose5", f"CPTNet head and expression generator ({weights.name} "
                     f"of {weights.parent.name}), 128² + ResWarp", weights, load)


def adapter(info: ModelInfo, device: str = "cpu"):
    from .adapt import CPTNetAdapter

    return CPTNetAdapter(info, device)


def commands(cmds) -> None:
    from .cli import commands as add

    add(cmds)


METHOD = Method("cptnet", "Cascade Pose Transform Network (seed 000)", models=models, families={PREFIX: family},
                schemas={"pose5": (pose5, pose5_converter)}, adapter=adapter, commands=commands)
