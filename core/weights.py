"""Model weights on disk and on a device: safetensors files with a JSON record beside them (method, model config,
anything else the run wants to keep), written atomically; loaded without any trainer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import KeyfaceError
from .io import atomic_write_bytes, atomic_write_text


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KeyfaceError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


def save_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                  metadata={k: json.dumps(v) for k, v in (metadata or {}).items()}))


def save_weights(module, path, method: str, extra: dict | None = None) -> None:
    """Deployable weights: ``path`` (.safetensors) + a JSON beside it with the method, ``module.cfg`` and ``extra``."""
    path = Path(path)
    save_safetensors(path, module.state_dict())
    atomic_write_text(path.with_suffix(".json"), json.dumps({"method": method, "model": module.cfg.to_dict(),
                                                             **(extra or {})}, indent=1))


def load_weights(path, build, method: str, device="cpu"):
    """Load weights written by :func:`save_weights`; ``build(model_dict)`` makes the module."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise KeyfaceError(f"model weights not found: {path}")
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if meta.get("method", method) != method:
            raise ValueError(f"these are {meta['method']} weights, not {method}")
        module = build(meta["model"])
        module.load_state_dict(load_file(str(path), device=str(device)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise KeyfaceError(f"cannot load {method} weights {path}: {exc}") from None
    return module.to(device).eval()
