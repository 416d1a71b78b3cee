"""The generator registry: which models keyface can run, and the schema each is driven by.

A generator package registers a :class:`ModelInfo` when it lands (``register``). Only models whose networks and weights
are actually present are listed, so ``keyface models`` and scene validation never offer something that cannot run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import KeyfaceError
from .rig import Schema, get_schema


@dataclass(frozen=True)
class ModelInfo:
    id: str
    method: str  # seed method folder, e.g. "atw"
    schema_name: str
    description: str
    weights: Path | None = None
    loader: Callable | None = None  # (info, device) → a runtime: grid, schema, __call__(low, values) → (out, flow)

    def load(self, device: str = "cpu"):
        if self.loader is None:
            raise KeyfaceError(f"model {self.id} cannot be loaded")
        return self.loader(self, device)

    @property
    def schema(self) -> Schema:
        return get_schema(self.schema_name)


_REGISTRY: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> None:
    get_schema(info.schema_name)  # fail early on a typo
    _REGISTRY[info.id] = info


_BUILTIN = ("atw", "cptnet")
_loaded = False


def _load_builtin() -> None:
    """Import the built-in method packages, each of which registers its shipped models (cheap: no torch)."""
    global _loaded
    if not _loaded:
        _loaded = True
        import importlib

        for name in _BUILTIN:
            importlib.import_module(f"keyface.core.methods.{name}")


def available_models() -> list[ModelInfo]:
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda m: m.id)


def get_model(model_id: str) -> ModelInfo:
    _load_builtin()
    try:
        return _REGISTRY[model_id]
    except KeyError:
        have = ", ".join(_REGISTRY) or "none yet"
        raise KeyfaceError(f"unknown model {model_id!r} (installed: {have})") from None
