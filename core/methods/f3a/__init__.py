"""F³A-GAN (seed 002): 3DMM keys → facial flow → two-stream generator, lifted in place by ResWarp.

Its 3DMM is the synthetic engine's linear face model (:mod:`.geometry`), schema ``3dmm:12x19`` (12 identity and 19
expression coefficients: α_exp is the character rig's expression channels, so the converter is exact for them).
A scene's values are offsets from the source's own fit (:func:`.geometry.target_params`).

Ships ``f3a-3dmm`` (``weights/f3a_3dmm.safetensors``: the generator, ``weights/f3a_regressor.safetensors``: the 3DMM
regressor, each with its JSON config, and ``MODEL_CARD.md``); listed only when both are present. Importing this
package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...models import Method, ModelInfo
from ...synth.face import N_EXP, N_ID

SCHEMA = f"3dmm:{N_ID}x{N_EXP}"
WEIGHTS = Path(__file__).parent / "weights" / "f3a_3dmm.safetensors"
REGRESSOR = Path(__file__).parent / "weights" / "f3a_regressor.safetensors"


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import F3ARuntime

    return F3ARuntime(info.weights, REGRESSOR, device)


def models():
    if WEIGHTS.exists() and REGRESSOR.exists():
        yield ModelInfo("f3a-3dmm", "f3a", SCHEMA, "F³A-GAN face generator driven by 3DMM keys (facial flow, "
                        "two-stream SPADE framework) on a head crop, 128² + ResWarp; trained on keyface's synthetic "
                        "characters", WEIGHTS, load)


def _schema():
    from ...rig import make_3dmm

    return make_3dmm(N_ID, N_EXP)


def _converter():
    from ...synth.sample import engine_3dmm_converter  # α_exp = the expression channels: the identity basis

    return engine_3dmm_converter()


def commands(cmds) -> None:
    from .cli import commands as add

    add(cmds)


METHOD = Method("f3a", "F³A-GAN: facial flow + hierarchical conditional framework (seed 002)", models=models,
                schemas={SCHEMA: (_schema, _converter)}, commands=commands)
