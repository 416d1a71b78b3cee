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
_FAMILIES: dict = {}  # prefix → (argument → ModelInfo): models named "prefix:argument", e.g. a character model folder


def register(info: ModelInfo) -> None:
    get_schema(info.schema_name)  # fail early on a typo
    _REGISTRY[info.id] = info


def register_family(prefix: str, make: Callable) -> None:
    """Models whose id is ``prefix:argument`` (e.g. ``tha4-student:/path/to/character``), made on demand."""
    _FAMILIES[prefix] = make


_BUILTIN = ("atw", "cptnet", "tha4")
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
    if model_id in _REGISTRY:
        return _REGISTRY[model_id]
    prefix, sep, arg = str(model_id).partition(":")
    if sep and prefix in _FAMILIES:
        if not arg:
            raise KeyfaceError(f"model {model_id!r}: give what follows {prefix}: (e.g. a character model folder)")
        return _FAMILIES[prefix](arg)
    have = ", ".join(list(_REGISTRY) + [f"{p}:…" for p in _FAMILIES]) or "none yet"
    raise KeyfaceError(f"unknown model {model_id!r} (installed: {have})")
