"""Style mapping (seed 003): 3D keypoints, pose–expression network, warping network and intermediate generator.

Ships ``stylemap-kp`` (``weights/stylemap_kp.safetensors`` with its JSON config, and ``MODEL_CARD.md``), driven by
the ``kp`` schema (head pose, translation, the 15 canonical keypoints' expression deltas) on a head crop, and reading
motion from a reference clip (``keyface keys-from-video``). Listed only when its weights are present. Importing this
package does not import torch."""

from __future__ import annotations

from pathlib import Path

from ...models import Method, ModelInfo

WEIGHTS = Path(__file__).parent / "weights" / "stylemap_kp.safetensors"


def load(info: ModelInfo, device: str = "cpu"):
    from .runtime import StyleMapRuntime

    return StyleMapRuntime(info.weights, device)


def models():
    if WEIGHTS.exists():
        yield ModelInfo("stylemap-kp", "stylemap", "kp", "Style-mapping keypoint generator: 15 3D keypoints, head pose "
                        "and expression deltas drive a warping generator on a head crop, 128² + ResWarp; reads motion "
                        "from reference clips; trained on keyface's synthetic characters", WEIGHTS, load)


def commands(cmds) -> None:
    from .cli import commands as add

    add(cmds)


METHOD = Method("stylemap", "Style mapping: keypoints, pose–expression and warping networks (seed 003)",
                models=models, commands=commands)
