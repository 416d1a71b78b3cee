"""The generator registry: the methods keyface has, the models they ship, and the schema each model is driven by.

**A method is one folder** below ``keyface/core/methods/``, discovered here (nothing else in keyface names it). Its
``__init__.py`` defines ``METHOD = Method(...)`` and imports no torch; see :class:`Method` for what it declares and
the README's "How to add a generator" for the recipe. Only models whose networks and weights are present are listed,
so ``keyface models`` and scene validation never offer something that cannot run.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KeyfaceError
from .rig import Schema, get_schema


@dataclass(frozen=True)
class ModelInfo:
    id: str
    method: str  # the method folder, e.g. "atw"
    schema_name: str
    description: str
    weights: Path | None = None
    loader: Callable | None = None  # (info, device) → a keyface.core.generator.Generator
    licence: str = ""  # the weights' licence and attribution, where they are not keyface's own

    def load(self, device: str = "cpu"):
        if self.loader is None:
            raise KeyfaceError(f"model {self.id} cannot be loaded")
        return self.loader(self, device)

    @property
    def schema(self) -> Schema:
        return get_schema(self.schema_name)


@dataclass(frozen=True)
class Method:
    """What a method folder declares (``METHOD`` in its ``__init__.py``).

    * ``models()``: its installed models (check that the weights exist; return none otherwise);
    * ``families``: model-id prefixes made on demand, ``prefix:argument`` (e.g. ``tha4-student:FOLDER``);
    * ``install``: model id → how to install it, for the models it knows but finds missing (named in the error);
    * ``schemas``: schemas of its own: name → (build() → Schema, converter() → rig.Converter);
    * ``teachers``: distillation teachers it offers (``keyface distill --teacher NAME[:ARG]``): name →
      factory(arg, device) → a teacher as :mod:`keyface.core.methods.tha4.distill` describes;
    * ``adapter(info, device)``: per-character adaptation of its models (``keyface adapt``; the object
      :mod:`keyface.core.adapt` describes), or None;
    * ``commands(cli)``: adds its sub-commands (train / eval / bench / its own jobs) to the parser groups
      (:class:`keyface.core.cli.common.Commands`), e.g. ``keyface train NAME`` whose progress bar shows the loss
      names its ``cli`` module lists (``PROGRESS_KEYS``).

    Shipped weights live in the folder's ``weights/`` (``setup.py`` packages every method's ``weights/``)."""

    name: str
    summary: str
    models: Callable[[], Iterable[ModelInfo]] = lambda: ()
    families: Mapping[str, Callable[[str], ModelInfo]] = field(default_factory=dict)
    install: Mapping[str, str] = field(default_factory=dict)
    schemas: Mapping[str, tuple[Callable, Callable]] = field(default_factory=dict)
    teachers: Mapping[str, Callable] = field(default_factory=dict)
    adapter: Callable | None = None
    commands: Callable | None = None


_METHODS: dict[str, Method] = {}
_REGISTRY: dict[str, ModelInfo] = {}
_FAMILIES: dict[str, Callable[[str], ModelInfo]] = {}
_loaded = False


def methods() -> list[Method]:
    """Every method folder's declaration, in name order (imports them once: cheap, no torch)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import methods as package
        from .rig import register_schema

        for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not mod.ispkg:
                continue
            method = getattr(importlib.import_module(f"{package.__name__}.{mod.name}"), "METHOD", None)
            if not isinstance(method, Method):
                raise RuntimeError(f"keyface.core.methods.{mod.name} declares no METHOD = Method(...)")
            _METHODS[method.name] = method
            for name, (build, converter) in method.schemas.items():
                register_schema(name, build, converter)
            for info in method.models():
                register(info)
            _FAMILIES.update(method.families)
    return [_METHODS[k] for k in sorted(_METHODS)]


def register(info: ModelInfo) -> None:
    """Add a model (a method's own, a discovered character model, or a test's) to the registry."""
    get_schema(info.schema_name)  # fail early on a typo
    _REGISTRY[info.id] = info


def unregister(model_id: str) -> None:
    _REGISTRY.pop(model_id, None)


@contextmanager
def registered(*infos: ModelInfo):
    """Models registered for the duration of a ``with`` block (tests, a temporary model), removed afterwards."""
    for info in infos:
        register(info)
    try:
        yield infos
    finally:
        for info in infos:
            unregister(info.id)


def get_teacher(spec: str, device: str = "cpu"):
    """A distillation teacher by name (``NAME`` or ``NAME:ARG``), from the method that offers it."""
    name, _, arg = str(spec).partition(":")
    offers = {k: f for m in methods() for k, f in m.teachers.items()}
    if name not in offers:
        raise KeyfaceError(f"unknown teacher {spec!r} (teachers: {', '.join(sorted(offers)) or 'none'})")
    return offers[name](arg, device)


def available_models() -> list[ModelInfo]:
    methods()
    return sorted(_REGISTRY.values(), key=lambda m: m.id)


def get_model(model_id: str) -> ModelInfo:
    methods()
    if model_id in _REGISTRY:
        return _REGISTRY[model_id]
    prefix, sep, arg = str(model_id).partition(":")
    if sep and prefix in _FAMILIES:
        if not arg:
            raise KeyfaceError(f"model {model_id!r}: give what follows {prefix}: (e.g. a character model folder)")
        return _FAMILIES[prefix](arg)
    for method in _METHODS.values():
        if model_id in method.install:
            raise KeyfaceError(f"model {model_id} is not installed: {method.install[model_id]}")
    have = ", ".join(list(_REGISTRY) + [f"{p}:…" for p in _FAMILIES]) or "none yet"
    raise KeyfaceError(f"unknown model {model_id!r} (installed: {have})")
