"""The generator contract: what every method's runtime is, and what the render spine may ask of it.

A runtime is a :class:`Generator`. The render path (:mod:`keyface.core.pipeline`), the editors and the CLI use only
what is written here; a capability a runtime may lack is *declared* (``has_raw``, ``batch_size``, ``residual``), never
probed with ``hasattr``/``getattr``.

* ``schema``: the name of the parameter schema its values follow (:mod:`keyface.core.rig`).
* ``grid``: (height, width) of the low-resolution image it sees and returns.
* :meth:`default_face_box`: the face box of a document when none is given (:func:`default_face_box`: a 512² image
  is THA's frame as it is, THA's own input format; any other gets the detected box).
* :meth:`working_box`: the region of the document it runs on, derived from the one face box every model shares
  (see :mod:`keyface.core.box`): the face box itself by default, a head crop, THA's 512² frame, …
* ``__call__(low, values)`` → :class:`Generated`: ``low`` (B, h, w, 4) float32 straight sRGB RGBA in [0, 1] at the
  grid size, ``values`` (B, C) float32 in the schema. The result's ``out`` is in the same convention; ``flow`` is the
  backward motion field in grid pixels (zero where the generator moved nothing); ``weight``, when given, is ResWarp's
  residual weight (1: carry the document's own detail over, warped; 0: the generator painted new content there).
* ``residual``: how the render path cancels the generator's bias at rest: ``"additive"`` (the document plus
  G(target) − G(rest), for generators that change little and keep the rest) or ``"gated"`` (for generators that
  repaint what they change, such as THA3: :func:`keyface.core.pipeline.gated`).
* :meth:`raw` (only where ``has_raw``): the network's own output in its native convention (e.g. THA's linear,
  [−1, 1] images), for checking against an upstream implementation.
* ``has_fit``: the model fits a parametric face to the source (F³A's 3DMM) and its schema's values are offsets from
  that fit. Such a runtime provides :meth:`fit` (the source's absolute parameters), :meth:`fit_landmarks` (the
  fitted face's landmarks in grid pixels, drawn by the editor so an artist sees a bad fit), :meth:`use_fit` (take
  given parameters instead: a scene's ``source_fit``) and :meth:`values_from_fit` (the values that give the source
  another face's expression and pose: ``keyface pose --from-fit``). Fit files: :func:`read_fit`.
* ``has_motion``: the model reads motion from images (style mapping's keypoints): :meth:`motion_keys` gives the
  values that move a source as each frame of a reference moved from its first (``keyface keys-from-video``,
  :mod:`keyface.core.motion`).

Runtimes load weights through their method's ``networks`` module (never a trainer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .box import THA_HEAD, THA_SIZE, Box
from .errors import KeyfaceError


@dataclass
class Generated:
    """A generator's batch result at its grid size (see the module docstring for the conventions)."""

    out: np.ndarray  # (B, h, w, 4) float32 straight sRGB RGBA [0, 1]
    flow: np.ndarray  # (B, h, w, 2) float32 backward flow, grid pixels
    weight: np.ndarray | None = None  # (B, h, w) float32 in [0, 1]: ResWarp's residual weight

    def __post_init__(self):
        b = len(self.out)
        if self.out.ndim != 4 or self.flow.shape != self.out.shape[:3] + (2,):
            raise ValueError(f"generator result: out {self.out.shape} and flow {self.flow.shape} do not match")
        if self.weight is not None and self.weight.shape != self.out.shape[:3]:
            raise ValueError(f"generator result: weight {self.weight.shape} does not match out {self.out.shape}")
        if len(self.flow) != b:
            raise ValueError("generator result: batch sizes differ")


class Generator(ABC):
    """The runtime of one model (see the module docstring)."""

    schema: str
    grid: tuple[int, int]
    batch_size: int = 4  # frames per call that suit it on a CPU (the render path's default batch)
    has_raw: bool = False
    has_fit: bool = False
    has_motion: bool = False
    residual: str = "additive"  # bias cancellation in the render path: "additive" or "gated" (keyface.core.pipeline)

    def default_face_box(self, source: np.ndarray) -> Box:
        """The face box of a document when none is given (:func:`default_face_box`)."""
        return default_face_box(source)

    def working_box(self, face_box: Box, source: np.ndarray) -> Box:
        """The region of ``source`` the generator runs on, for a face box. Default: the face box itself."""
        return face_box

    @abstractmethod
    def __call__(self, low: np.ndarray, values: np.ndarray) -> Generated:
        """(B, h, w, 4) straight RGBA [0, 1] at the grid size + (B, C) schema values → :class:`Generated`."""

    def raw(self, low: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The network's own output in its native convention (only where ``has_raw``)."""
        raise KeyfaceError(f"{type(self).__name__} has no raw output (--raw is for generators with a native "
                           "convention of their own, e.g. THA)")

    def fit(self, low: np.ndarray) -> np.ndarray:
        """The source's absolute parameters in the schema, from its crop at the grid size (only where ``has_fit``)."""
        raise KeyfaceError(f"{type(self).__name__} fits no face model (3DMM fits are for e.g. f3a-3dmm)")

    def fit_landmarks(self, low: np.ndarray) -> np.ndarray:
        """(N, 2) landmarks of the fitted face in grid pixels (only where ``has_fit``)."""
        raise KeyfaceError(f"{type(self).__name__} fits no face model (3DMM fits are for e.g. f3a-3dmm)")

    def use_fit(self, params, low: np.ndarray) -> None:
        """Use these parameters as the fit of the source crop ``low`` (``None``: fit it again); only where
        ``has_fit``."""
        raise KeyfaceError(f"{type(self).__name__} fits no face model (3DMM fits are for e.g. f3a-3dmm)")

    def values_from_fit(self, driver: np.ndarray, low: np.ndarray) -> np.ndarray:
        """Values giving the source the expression and pose of another face's fit (only where ``has_fit``)."""
        raise KeyfaceError(f"{type(self).__name__} fits no face model (3DMM fits are for e.g. f3a-3dmm)")

    def motion_keys(self, crops: np.ndarray) -> np.ndarray:
        """(F, h, w, 4) straight RGBA crops of a reference at the grid size → (F, C) values in the schema: each
        frame's pose and expression relative to the first (only where ``has_motion``)."""
        raise KeyfaceError(f"{type(self).__name__} does not read motion from a reference (use a model such as "
                           "stylemap-kp)")


def default_face_box(source: np.ndarray) -> Box:
    """The face box when none is given, the same for every model: a 512² image is taken as THA's frame as it is (THA's
    own input format: the head box at columns 192–320, rows 64–192); any other image gets the detected box."""
    if source.shape[:2] == (THA_SIZE, THA_SIZE):
        return Box(*THA_HEAD)
    from .facebox import detect_face_box

    return detect_face_box(source)


def read_fit(path, schema) -> np.ndarray:
    """A fit file (``keyface fit3dmm --out``: ``{"schema": NAME, "params": {channel: value}}``) → (C,) parameters in
    ``schema``'s order, checked: the schema must match and every value be finite."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("schema") != schema.name:
            raise ValueError(f"it is a fit in {doc.get('schema')!r}; the model needs {schema.name}")
        vals = np.array([float(doc["params"][n]) for n in schema.names], np.float32)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise KeyfaceError(f"cannot read the fit {path}: {e}") from None
    if not np.isfinite(vals).all():
        raise KeyfaceError(f"the fit {path} has non-finite values")
    return vals
