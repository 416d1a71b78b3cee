"""Parameter rigs: the schemas generators are driven by, and the artist's character rig that maps onto all of them.

A :class:`Schema` is an ordered list of :class:`Channel` s. Values travel as float arrays whose last axis follows the
schema's channel order (``(..., C)``), so a whole timeline of frames converts and validates in one call.

Shared schemas (see :func:`get_schema`; a method folder may declare schemas of its own, registered with
:func:`register_schema` when the methods are listed, e.g. CPTNet's ``pose5``):

``tha45``      THA3/THA4 official 45-parameter order and ranges.
``au17``       OpenFace action-unit intensities 0–5; networks see intensity / 5 (:meth:`Schema.to_network`).
``3dmm``       identity (K) and expression (L) coefficients, rotation (degrees), translation, scale.
               ``3dmm`` is K=80, L=64 (the usual BFM split); a model with its own basis names ``3dmm:KxL``.
``kp``         style-mapping keypoint generator: yaw/pitch/roll in degrees over the pose network's 66 bins of 3°
               ([-99°, 99°]), translation (3), expression deltas of 15 canonical keypoints × (x, y, z).
``character``  the semantic channels an artist thinks in; converters map it to and from every schema above.

Conventions (one for all of keyface):

* ``left``/``right`` are the character's own sides (a character's left eye is on the image's right), as in THA.
* ``head_yaw`` > 0 turns the face toward the viewer's right; ``head_pitch`` > 0 raises the face (looks up);
  ``head_roll`` > 0 tilts the top of the head toward the viewer's right (clockwise on screen). Same for the body.
* ``iris_x`` > 0 moves the irises toward the viewer's right, ``iris_y`` > 0 up; ``iris_size`` < 0 shrinks them.

Validation policy: non-finite values (NaN, ±inf) and unknown channel names are always errors. Out-of-range values are
errors under ``policy="error"`` (the default, used for scene files and the CLI) and are clamped with a
:class:`RigWarning` naming each clamped channel under ``policy="clamp"`` (for live input such as sliders or MIDI).
Nothing is ever clamped silently.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import RigError

POLICIES = ("error", "clamp")


class RigWarning(UserWarning):
    """Values were clamped to their channel range under ``policy="clamp"``."""


@dataclass(frozen=True)
class Channel:
    name: str
    label: str
    group: str
    side: str | None  # "L", "R" or None
    min: float
    max: float
    default: float
    unit: str = ""
    description: str = ""

    def __post_init__(self):
        if self.side not in ("L", "R", None):
            raise ValueError(f"channel {self.name}: side must be 'L', 'R' or None")
        if not (self.min < self.max and self.min <= self.default <= self.max):
            raise ValueError(f"channel {self.name}: need min < max and default within [min, max]")


class Schema:
    """An ordered, named set of channels. Arrays of values have the channels on their last axis."""

    def __init__(self, name: str, channels: Iterable[Channel], description: str = "", network_divisor: float = 1.0):
        self.name = name
        self.description = description
        self.channels: tuple[Channel, ...] = tuple(channels)
        self.network_divisor = float(network_divisor)
        self.names: tuple[str, ...] = tuple(c.name for c in self.channels)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"schema {name}: duplicate channel names")
        self._index = {n: i for i, n in enumerate(self.names)}
        self.mins = np.array([c.min for c in self.channels], dtype=np.float64)
        self.maxs = np.array([c.max for c in self.channels], dtype=np.float64)
        self.defaults = np.array([c.default for c in self.channels], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.channels)

    def __iter__(self):
        return iter(self.channels)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __repr__(self) -> str:
        return f"Schema({self.name!r}, {len(self)} channels)"

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise RigError(self.unknown_message(name)) from None

    def channel(self, name: str) -> Channel:
        return self.channels[self.index(name)]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; its channels are {', '.join(self.names[:8])}"
        if not close and len(self.names) > 8:
            hint += ", …"
        return f"unknown channel {name!r} for schema {self.name}{hint}"

    def validate(self, values, policy: str = "error") -> np.ndarray:
        """Check an array ``(..., C)``; return it as float64 (clamped under ``policy="clamp"``)."""
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")
        arr = np.array(values, dtype=np.float64)
        if arr.ndim == 0 or arr.shape[-1] != len(self):
            raise RigError(f"schema {self.name} expects {len(self)} values per frame, got shape {arr.shape}")
        bad = ~np.isfinite(arr)
        if bad.any():
            names = sorted({self.names[i] for i in np.nonzero(bad)[-1]})
            raise RigError(f"non-finite value (NaN or inf) for {', '.join(names)} in schema {self.name}")
        low, high = arr < self.mins, arr > self.maxs
        out = low | high
        if out.any():
            cols = np.nonzero(out.reshape(-1, len(self)).any(axis=0))[0]
            detail = []
            for i in cols:
                col = arr.reshape(-1, len(self))[:, i]
                worst = col[np.argmax(np.maximum(self.mins[i] - col, col - self.maxs[i]))]
                detail.append(f"{self.names[i]}={worst:g} not in [{self.mins[i]:g}, {self.maxs[i]:g}]")
            if policy == "error":
                raise RigError(f"out of range in schema {self.name}: " + "; ".join(detail))
            warnings.warn("clamped " + "; ".join(detail), RigWarning, stacklevel=2)
            arr = np.clip(arr, self.mins, self.maxs)
        return arr

    def vector(self, values: Mapping[str, float] | None = None, policy: str = "error") -> np.ndarray:
        """A full value vector from ``{channel: value}``; missing channels take their defaults."""
        vec = self.defaults.copy()
        for name, value in (values or {}).items():
            if name not in self._index:
                raise RigError(self.unknown_message(name))
            try:
                vec[self._index[name]] = float(value)
            except (TypeError, ValueError):
                raise RigError(f"{self.name}.{name}: expected a number, got {value!r}") from None
        return self.validate(vec, policy)

    def to_dict(self, vec) -> dict[str, float]:
        arr = np.asarray(vec, dtype=np.float64)
        if arr.shape != (len(self),):
            raise RigError(f"schema {self.name} expects a vector of {len(self)} values, got shape {arr.shape}")
        return {n: float(v) for n, v in zip(self.names, arr, strict=True)}

    def to_network(self, values) -> np.ndarray:
        """Values as the generator's network sees them (float32); e.g. au17 intensities / 5."""
        return (np.asarray(values, dtype=np.float64) / self.network_divisor).astype(np.float32)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "network_divisor": self.network_divisor,
            "channels": [asdict(c) for c in self.channels],
        }


# ----------------------------------------------------------------------------------------------------------- schemas

_SIDES = (("left", "L"), ("right", "R"))


def _tha45() -> Schema:
    chans: list[Channel] = []

    def sided(prefix: str, kinds: Iterable[str], group: str, what: str):
        for kind in kinds:
            for side, s in _SIDES:
                name = f"{prefix}_{kind}_{side}"
                label = f"{prefix.capitalize()} {kind.replace('_', ' ')} {s}"
                chans.append(Channel(name, label, group, s, 0, 1, 0, "", f"{what}: {kind.replace('_', ' ')}, {side}"))

    sided("eyebrow", ("troubled", "angry", "lowered", "raised", "happy", "serious"), "eyebrow", "Eyebrow shape")
    sided("eye", ("wink", "happy_wink", "surprised", "relaxed", "unimpressed", "raised_lower_eyelid"), "eye", "Eye")
    sided("iris", ("small",), "iris", "Iris size")
    for kind in ("aaa", "iii", "uuu", "eee", "ooo", "delta"):
        chans.append(Channel(f"mouth_{kind}", f"Mouth {kind}", "mouth", None, 0, 1, 0, "", f"Mouth shape '{kind}'"))
    sided("mouth", ("lowered_corner", "raised_corner"), "mouth", "Mouth corner")
    chans.append(Channel("mouth_smirk", "Mouth smirk", "mouth", None, 0, 1, 0, "", "Smirk"))
    for name, desc in (
        ("iris_rotation_x", "Iris rotation about the x axis (vertical gaze)"),
        ("iris_rotation_y", "Iris rotation about the y axis (horizontal gaze)"),
        ("head_x", "Head rotation about the x axis (> 0 looks up)"),
        ("head_y", "Head rotation about the y axis (< 0 turns toward the viewer's right)"),
        ("neck_z", "Neck rotation about the z axis"),
        ("body_y", "Body rotation about the y axis"),
        ("body_z", "Body rotation about the z axis"),
    ):
        group = "iris" if name.startswith("iris") else ("body" if name.startswith("body") else "head")
        chans.append(Channel(name, name.replace("_", " ").capitalize(), group, None, -1, 1, 0, "", desc))
    chans.append(Channel("breathing", "Breathing", "body", None, 0, 1, 0, "", "Breathing phase"))
    assert len(chans) == 45
    return Schema("tha45", chans, "Talking Head(?) Anime 3/4 pose (seed 001), official order")


AU17 = (
    ("AU01", "Inner brow raiser"), ("AU02", "Outer brow raiser"), ("AU04", "Brow lowerer"),
    ("AU05", "Upper lid raiser"), ("AU06", "Cheek raiser"), ("AU07", "Lid tightener"), ("AU09", "Nose wrinkler"),
    ("AU10", "Upper lip raiser"), ("AU12", "Lip corner puller"), ("AU14", "Dimpler"),
    ("AU15", "Lip corner depressor"), ("AU17", "Chin raiser"), ("AU20", "Lip stretcher"), ("AU23", "Lip tightener"),
    ("AU25", "Lips part"), ("AU26", "Jaw drop"), ("AU45", "Blink"),
)


def _au17() -> Schema:
    group = {"AU01": "brows", "AU02": "brows", "AU04": "brows", "AU05": "eyes", "AU06": "eyes", "AU07": "eyes",
             "AU45": "eyes", "AU09": "nose"}
    chans = [Channel(n, f"{n} {label}", group.get(n, "mouth"), None, 0, 5, 0, "intensity",
                     f"{label} (OpenFace intensity 0–5)") for n, label in AU17]
    return Schema("au17", chans, "Facial action units, OpenFace intensity order (seed 004)", network_divisor=5.0)


KP_ANGLE = 99.0  # 66 bins of 3° each, as the pose-expression network of seed 003 predicts
KP_COUNT = 15


def _kp() -> Schema:
    chans = [Channel(a, a.capitalize(), "head", None, -KP_ANGLE, KP_ANGLE, 0, "deg",
                     f"Head {a} in degrees (66 bins of 3° over ±99°)") for a in ("yaw", "pitch", "roll")]
    chans += [Channel(f"t{a}", f"Translate {a}", "translation", None, -1, 1, 0, "",
                      f"Translation along {a} in normalised image units") for a in "xyz"]
    from .synth.face import KP_LANDMARKS  # keypoint k is this landmark of the face (what the label names)

    for k, landmark in enumerate(KP_LANDMARKS):
        for a in "xyz":
            label = landmark.replace("_", " ")
            chans.append(Channel(f"exp_{k:02d}_{a}", f"{label} Δ{a}", "expression", None, -0.5, 0.5, 0, "",
                                 f"Expression deformation of canonical keypoint {k} ({label}) along {a}, in face-box "
                                 "sides, in the head's frame"))
    return Schema("kp", chans, "Style-mapping keypoint generator pose and expression (seed 003)")


THREEDMM_DEFAULT = (80, 64)
THREEDMM_COEF = 3.0  # coefficients are in units of the basis' standard deviation
THREEDMM_ANGLES = {"pitch": 60.0, "yaw": 90.0, "roll": 60.0}


def make_3dmm(n_id: int, n_exp: int) -> Schema:
    if n_id < 0 or n_exp < 0:
        raise RigError("3dmm needs non-negative coefficient counts")
    chans = [Channel(f"id_{i:02d}", f"Identity {i}", "identity", None, -THREEDMM_COEF, THREEDMM_COEF, 0, "σ",
                     f"Identity coefficient {i} (α_id)") for i in range(n_id)]
    chans += [Channel(f"exp_{i:02d}", f"Expression {i}", "expression", None, -THREEDMM_COEF, THREEDMM_COEF, 0, "σ",
                      f"Expression coefficient {i} (α_exp)") for i in range(n_exp)]
    chans += [Channel(a, a.capitalize(), "rotation", None, -r, r, 0, "deg", f"Head {a} in degrees")
              for a, r in THREEDMM_ANGLES.items()]
    chans += [Channel(f"t{a}", f"Translate {a}", "translation", None, -1, 1, 0, "",
                      f"Translation along {a} (normalised image units)") for a in "xyz"]
    chans.append(Channel("scale", "Scale", "translation", None, 0.25, 4, 1, "×", "Projection scale s"))
    name = "3dmm" if (n_id, n_exp) == THREEDMM_DEFAULT else f"3dmm:{n_id}x{n_exp}"
    return Schema(name, chans, f"3D morphable model X = s·R·(X̄ + A_id α_id + A_exp α_exp) + t (seed 002), "
                               f"K={n_id}, L={n_exp}")


def _character() -> Schema:
    c = Channel
    chans = [
        c("blink_left", "Blink L", "eyes", "L", 0, 1, 0, "", "Close the left eye"),
        c("blink_right", "Blink R", "eyes", "R", 0, 1, 0, "", "Close the right eye"),
        c("eye_smile_left", "Eye smile L", "eyes", "L", 0, 1, 0, "", "Happy, curved closed left eye"),
        c("eye_smile_right", "Eye smile R", "eyes", "R", 0, 1, 0, "", "Happy, curved closed right eye"),
        c("eyes_wide", "Eyes wide", "eyes", None, 0, 1, 0, "", "Open both eyes wide (surprise)"),
        c("brow_raise_left", "Brow raise L", "brows", "L", 0, 1, 0, "", "Raise the left brow"),
        c("brow_raise_right", "Brow raise R", "brows", "R", 0, 1, 0, "", "Raise the right brow"),
        c("brow_lower_left", "Brow lower L", "brows", "L", 0, 1, 0, "", "Lower the left brow"),
        c("brow_lower_right", "Brow lower R", "brows", "R", 0, 1, 0, "", "Lower the right brow"),
        c("brow_angle_left", "Brow angle L", "brows", "L", -1, 1, 0, "",
          "Left brow angle: > 0 inner end up (troubled), < 0 inner end down (angry)"),
        c("brow_angle_right", "Brow angle R", "brows", "R", -1, 1, 0, "",
          "Right brow angle: > 0 inner end up (troubled), < 0 inner end down (angry)"),
        c("iris_x", "Look left/right", "iris", None, -1, 1, 0, "", "Gaze: > 0 toward the viewer's right"),
        c("iris_y", "Look up/down", "iris", None, -1, 1, 0, "", "Gaze: > 0 up"),
        c("iris_size", "Iris size", "iris", None, -1, 1, 0, "", "< 0 smaller irises, > 0 larger"),
        c("mouth_open", "Mouth open", "mouth", None, 0, 1, 0, "", "Open the mouth (jaw drop)"),
        c("mouth_wide", "Mouth wide", "mouth", None, 0, 1, 0, "", "Stretch the mouth sideways ('ee')"),
        c("mouth_round", "Mouth round", "mouth", None, 0, 1, 0, "", "Round the lips ('oo')"),
        c("mouth_smile", "Smile", "mouth", None, 0, 1, 0, "", "Raise the mouth corners"),
        c("mouth_frown", "Frown", "mouth", None, 0, 1, 0, "", "Lower the mouth corners"),
        c("head_yaw", "Head turn", "head", None, -30, 30, 0, "deg", "> 0 turns the face toward the viewer's right"),
        c("head_pitch", "Head nod", "head", None, -30, 30, 0, "deg", "> 0 raises the face"),
        c("head_roll", "Head tilt", "head", None, -30, 30, 0, "deg", "> 0 tilts the head clockwise on screen"),
        c("body_yaw", "Body turn", "body", None, -30, 30, 0, "deg", "> 0 turns the body toward the viewer's right"),
        c("body_roll", "Body tilt", "body", None, -20, 20, 0, "deg", "> 0 tilts the body clockwise on screen"),
        c("breathing", "Breathing", "body", None, 0, 1, 0, "", "Breathing phase (0 = exhaled, 1 = inhaled)"),
    ]
    return Schema("character", chans, "The artist's semantic rig; converts to and from every generator schema")


_BUILDERS = {"tha45": _tha45, "au17": _au17, "kp": _kp, "character": _character,
             "3dmm": lambda: make_3dmm(*THREEDMM_DEFAULT)}
_CACHE: dict[str, Schema] = {}
_3DMM_RE = re.compile(r"^3dmm:(\d+)x(\d+)$")


def register_schema(name: str, build, converter=None) -> None:
    """A schema a method folder declares (``Method.schemas``): ``build()`` → :class:`Schema`, ``converter()`` →
    :class:`Converter` to and from the character rig."""
    _BUILDERS[name] = build
    if converter is not None:
        _CONVERTERS[name] = converter


def _methods_loaded() -> None:
    """Schemas declared by method folders are registered when the methods are first listed."""
    from .models import methods

    methods()


def schema_names() -> tuple[str, ...]:
    _methods_loaded()
    return tuple(_BUILDERS)


def get_schema(name: str) -> Schema:
    """A schema by name (``3dmm:KxL`` for a 3DMM with its own coefficient counts)."""
    if name not in _CACHE:
        m = _3DMM_RE.match(str(name))
        if m:
            _CACHE[name] = make_3dmm(int(m.group(1)), int(m.group(2)))
            return _CACHE[name]
        if name not in _BUILDERS:
            _methods_loaded()
        if name not in _BUILDERS:
            close = difflib.get_close_matches(str(name), _BUILDERS, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise RigError(f"unknown schema {name!r}{hint} (known: {', '.join(_BUILDERS)}, or 3dmm:KxL)")
        _CACHE[name] = _BUILDERS[name]()
    return _CACHE[name]


# -------------------------------------------------------------------------------------------------------- converters


class _Cols:
    """Named column access to an array ``(..., C)`` of one schema."""

    def __init__(self, schema: Schema, arr: np.ndarray):
        self.schema, self.arr = schema, arr

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arr[..., self.schema.index(name)]

    def mean(self, a: str, b: str) -> np.ndarray:
        return 0.5 * (self[a] + self[b])


def _assemble(schema: Schema, lead: tuple[int, ...], cols: Mapping[str, np.ndarray]) -> np.ndarray:
    out = np.broadcast_to(schema.defaults, lead + (len(schema),)).copy()
    for name, value in cols.items():
        out[..., schema.index(name)] = value
    return np.clip(out, schema.mins, schema.maxs)


@dataclass
class Converter:
    """Maps the character rig to a generator schema and back, vectorised over leading axes.

    Results are clipped to the target schema's ranges (e.g. a 30° head turn becomes ±1 = 20° in pose5).
    ``lost_to`` names character channels the schema cannot express; ``lost_from`` names schema channels the character
    rig cannot express (they are dropped when converting back). Both explain why, for the docs and ``keyface models``.
    """

    schema: Schema
    _to: object
    _from: object
    lost_to: dict[str, str] = field(default_factory=dict)
    lost_from: dict[str, str] = field(default_factory=dict)

    def to_schema(self, character_values) -> np.ndarray:
        ch = character_schema()
        arr = np.asarray(character_values, dtype=np.float64)
        if arr.ndim == 0 or arr.shape[-1] != len(ch):
            raise RigError(f"character rig expects {len(ch)} values per frame, got shape {arr.shape}")
        return _assemble(self.schema, arr.shape[:-1], self._to(_Cols(ch, arr)))

    def from_schema(self, schema_values) -> np.ndarray:
        arr = np.asarray(schema_values, dtype=np.float64)
        if arr.ndim == 0 or arr.shape[-1] != len(self.schema):
            raise RigError(f"schema {self.schema.name} expects {len(self.schema)} values, got shape {arr.shape}")
        return _assemble(character_schema(), arr.shape[:-1], self._from(_Cols(self.schema, arr)))


def character_schema() -> Schema:
    return get_schema("character")


_EXPRESSION_CHANNELS = tuple(n for n in _character().names
                             if not n.startswith(("head_", "body_")) and n != "breathing")
_POSE_ONLY = "the schema has no channel for it"


def lost_channels(names: Iterable[str], why: str = _POSE_ONLY) -> dict[str, str]:
    """Converter bookkeeping: each name → why it is lost."""
    return {n: why for n in names}


THA_DEG = 15.0  # THA's rotation parameters span ±1; we take ±1 = ±15° (the THA3 convention)


def _tha45_converter() -> Converter:
    s = get_schema("tha45")

    def to(c):
        out = {}
        for side in ("left", "right"):
            angle = c[f"brow_angle_{side}"]
            out[f"eyebrow_troubled_{side}"] = np.maximum(angle, 0)
            out[f"eyebrow_angry_{side}"] = np.maximum(-angle, 0)
            out[f"eyebrow_lowered_{side}"] = c[f"brow_lower_{side}"]
            out[f"eyebrow_raised_{side}"] = c[f"brow_raise_{side}"]
            out[f"eye_wink_{side}"] = c[f"blink_{side}"]
            out[f"eye_happy_wink_{side}"] = c[f"eye_smile_{side}"]
            out[f"eye_surprised_{side}"] = c["eyes_wide"]
            out[f"iris_small_{side}"] = np.maximum(-c["iris_size"], 0)
            out[f"mouth_raised_corner_{side}"] = c["mouth_smile"]
            out[f"mouth_lowered_corner_{side}"] = c["mouth_frown"]
        out.update(mouth_aaa=c["mouth_open"], mouth_iii=c["mouth_wide"], mouth_ooo=c["mouth_round"],
                   iris_rotation_x=c["iris_y"], iris_rotation_y=-c["iris_x"],
                   head_x=c["head_pitch"] / THA_DEG, head_y=-c["head_yaw"] / THA_DEG, neck_z=c["head_roll"] / THA_DEG,
                   body_y=-c["body_yaw"] / THA_DEG, body_z=c["body_roll"] / THA_DEG,
                   breathing=c["breathing"])
        return out

    def back(t):
        out = {}
        for side in ("left", "right"):
            out[f"brow_angle_{side}"] = t[f"eyebrow_troubled_{side}"] - t[f"eyebrow_angry_{side}"]
            out[f"brow_lower_{side}"] = t[f"eyebrow_lowered_{side}"]
            out[f"brow_raise_{side}"] = t[f"eyebrow_raised_{side}"]
            out[f"blink_{side}"] = t[f"eye_wink_{side}"]
            out[f"eye_smile_{side}"] = t[f"eye_happy_wink_{side}"]
        out.update(eyes_wide=t.mean("eye_surprised_left", "eye_surprised_right"),
                   iris_size=-t.mean("iris_small_left", "iris_small_right"),
                   mouth_smile=t.mean("mouth_raised_corner_left", "mouth_raised_corner_right"),
                   mouth_frown=t.mean("mouth_lowered_corner_left", "mouth_lowered_corner_right"),
                   mouth_open=t["mouth_aaa"], mouth_wide=t["mouth_iii"],
                   mouth_round=np.maximum(t["mouth_ooo"], t["mouth_uuu"]),
                   iris_y=t["iris_rotation_x"], iris_x=-t["iris_rotation_y"],
                   head_pitch=t["head_x"] * THA_DEG, head_yaw=-t["head_y"] * THA_DEG, head_roll=t["neck_z"] * THA_DEG,
                   body_yaw=-t["body_y"] * THA_DEG, body_roll=t["body_z"] * THA_DEG,
                   breathing=t["breathing"])
        return out

    angle = "clipped to ±15° (THA's ±1)"
    lost_to = {"iris_size": "THA can only shrink irises (iris_small); enlarging is dropped",
               **{n: angle for n in ("head_yaw", "head_pitch", "head_roll", "body_yaw", "body_roll")}}
    lost_from = lost_channels((f"eyebrow_{k}_{s}" for k in ("happy", "serious") for s in ("left", "right")),
                      "no character channel")
    lost_from.update(lost_channels((f"eye_{k}_{s}" for k in ("relaxed", "unimpressed", "raised_lower_eyelid")
                            for s in ("left", "right")), "no character channel"))
    lost_from.update(lost_channels(("mouth_eee", "mouth_delta", "mouth_smirk"), "no character channel"))
    lost_from["mouth_uuu"] = "read as mouth_round (max of uuu and ooo)"
    for pair in ("eye_surprised", "iris_small", "mouth_raised_corner", "mouth_lowered_corner"):
        lost_from[f"{pair}_left"] = lost_from[f"{pair}_right"] = "left/right averaged (one character channel)"
    return Converter(s, to, back, lost_to=lost_to, lost_from=lost_from)


AU_MAX = 5.0
AU25_GAIN = 3.0  # lips part (AU25) saturates at a third of the jaw drop


def _au17_converter() -> Converter:
    s = get_schema("au17")

    def to(c):
        raise_, lower = c.mean("brow_raise_left", "brow_raise_right"), c.mean("brow_lower_left", "brow_lower_right")
        angle = c.mean("brow_angle_left", "brow_angle_right")
        return {"AU01": AU_MAX * np.clip(raise_ + np.maximum(angle, 0), 0, 1), "AU02": AU_MAX * raise_,
                "AU04": AU_MAX * np.clip(lower + np.maximum(-angle, 0), 0, 1), "AU05": AU_MAX * c["eyes_wide"],
                "AU06": AU_MAX * c.mean("eye_smile_left", "eye_smile_right"), "AU12": AU_MAX * c["mouth_smile"],
                "AU15": AU_MAX * c["mouth_frown"], "AU20": AU_MAX * c["mouth_wide"],
                "AU25": AU_MAX * np.minimum(1, AU25_GAIN * c["mouth_open"]), "AU26": AU_MAX * c["mouth_open"],
                "AU45": AU_MAX * c.mean("blink_left", "blink_right")}

    def back(a):
        raise_ = a["AU02"] / AU_MAX
        angle = np.maximum(a["AU01"] / AU_MAX - raise_, 0)
        blink, smile = a["AU45"] / AU_MAX, a["AU06"] / AU_MAX
        return {"brow_raise_left": raise_, "brow_raise_right": raise_, "brow_angle_left": angle,
                "brow_angle_right": angle, "brow_lower_left": a["AU04"] / AU_MAX,
                "brow_lower_right": a["AU04"] / AU_MAX, "eyes_wide": a["AU05"] / AU_MAX,
                "eye_smile_left": smile, "eye_smile_right": smile, "blink_left": blink, "blink_right": blink,
                "mouth_smile": a["AU12"] / AU_MAX, "mouth_frown": a["AU15"] / AU_MAX,
                "mouth_wide": a["AU20"] / AU_MAX,
                "mouth_open": np.maximum(a["AU26"] / AU_MAX, a["AU25"] / (AU_MAX * AU25_GAIN))}

    sym = "action units are bilateral: left and right are averaged"
    lost_to = {n: sym for n in character_schema().names if n.endswith(("_left", "_right"))}
    lost_to.update(lost_channels(("iris_x", "iris_y", "iris_size", "mouth_round", "head_yaw", "head_pitch", "head_roll",
                          "body_yaw", "body_roll", "breathing")))
    lost_to["brow_angle_left"] = lost_to["brow_angle_right"] = (
        "averaged; > 0 adds to AU01 (inner brow raiser), < 0 adds to AU04 (brow lowerer) and reads back as brow_lower")
    lost_from = lost_channels(("AU07", "AU09", "AU10", "AU14", "AU17", "AU23"), "no character channel")
    return Converter(s, to, back, lost_to=lost_to, lost_from=lost_from)


_ANGLES = (("yaw", "head_yaw"), ("pitch", "head_pitch"), ("roll", "head_roll"))


def kp_expression_basis() -> np.ndarray:
    """(K·3, E): the ``kp`` schema's expression deltas per unit of each character expression channel — the synthetic
    engine's exact landmark motion (:func:`keyface.core.synth.face.linear_model`) of the 15 canonical keypoints, in
    face-box units (the box side is 1; the engine's unit is half of it)."""
    from .synth import face as fm

    _, _, a_exp = fm.linear_model()
    idx = [fm.LANDMARK_NAMES.index(n) for n in fm.KP_LANDMARKS]
    return a_exp[idx].reshape(-1, a_exp.shape[-1]) / 2.0


def _kp_converter() -> Converter:
    """Head pose one to one; expressions through :func:`kp_expression_basis`: exact toward ``kp``, least squares
    (minimum norm, then clipped to the rig's ranges) back. The keypoints see 14 of the 19 expression directions:
    opposite channels (brow raise/lower, smile/frown) come back as their net motion, iris size not at all."""
    s = get_schema("kp")
    basis = kp_expression_basis()
    pinv = np.linalg.pinv(basis, rcond=1e-3)
    exp_names = [n for n in s.names if n.startswith("exp_")]

    def to(c):
        out = {k: c[ch] for k, ch in _ANGLES}
        deltas = np.stack([c[n] for n in _EXPRESSION_CHANNELS], axis=-1) @ basis.T
        out.update({n: deltas[..., i] for i, n in enumerate(exp_names)})
        return out

    def back(p):
        out = {ch: p[k] for k, ch in _ANGLES}
        e = np.stack([p[n] for n in exp_names], axis=-1) @ pinv.T
        out.update({n: e[..., i] for i, n in enumerate(_EXPRESSION_CHANNELS)})
        return out

    why = "moves none of the 15 keypoints"
    return Converter(
        s, to, back,
        lost_to={**lost_channels(("body_yaw", "body_roll", "breathing")), **lost_channels(("iris_size",), why)},
        lost_from=lost_channels([n for n in s.names if n.startswith("t")],
                                "the head's translation belongs to the source, not the character rig"),
    )


def make_3dmm_converter(schema: Schema, expression_basis=None) -> Converter:
    """Converter for a 3DMM schema. ``expression_basis`` (L × E, E = the character's expression channels in
    :data:`EXPRESSION_CHANNELS` order) comes from the model that owns the 3DMM: α_exp = B · e. Back, e is the
    least-squares solution. Without a basis only head pose converts. Identity coefficients describe the person, not
    the animation: they are left at 0 here and set by the model's fit of the source image."""
    n_exp = sum(1 for n in schema.names if n.startswith("exp_"))
    exp_names = [n for n in schema.names if n.startswith("exp_")]
    basis = None
    if expression_basis is not None:
        basis = np.asarray(expression_basis, dtype=np.float64)
        if basis.shape != (n_exp, len(_EXPRESSION_CHANNELS)):
            raise RigError(f"expression basis must be {n_exp}×{len(_EXPRESSION_CHANNELS)}, got {basis.shape}")
        pinv = np.linalg.pinv(basis)

    def linear(cols, names_in, matrix, names_out):
        values = np.stack([cols[n] for n in names_in], axis=-1) @ matrix.T
        return {n: values[..., i] for i, n in enumerate(names_out)}

    def to(c):
        out = {k: c[ch] for k, ch in _ANGLES}
        if basis is not None:
            out.update(linear(c, _EXPRESSION_CHANNELS, basis, exp_names))
        return out

    def back(p):
        out = {ch: p[k] for k, ch in _ANGLES}
        if basis is not None:
            out.update(linear(p, exp_names, pinv, _EXPRESSION_CHANNELS))
        return out

    lost_to = lost_channels(("body_yaw", "body_roll", "breathing"))
    lost_from = lost_channels([n for n in schema.names if n.startswith(("id_", "t")) or n == "scale"],
                      "identity, translation and scale belong to the source fit, not the animation")
    if basis is None:
        why = "no expression basis given (the model using this 3DMM supplies one)"
        lost_to.update(lost_channels(_EXPRESSION_CHANNELS, why))
        lost_from.update(lost_channels(exp_names, why))
    return Converter(schema, to, back, lost_to=lost_to, lost_from=lost_from)


EXPRESSION_CHANNELS = _EXPRESSION_CHANNELS
_CONVERTERS = {"tha45": _tha45_converter, "au17": _au17_converter, "kp": _kp_converter}


def get_converter(schema: str | Schema) -> Converter:
    """The character-rig converter for a schema (identity for ``character``)."""
    s = schema if isinstance(schema, Schema) else get_schema(schema)
    if s.name == "character":
        return Converter(s, lambda c: {n: c[n] for n in s.names}, lambda c: {n: c[n] for n in s.names})
    if s.name not in _CONVERTERS:
        _methods_loaded()
    if s.name in _CONVERTERS:  # a method's own converter (e.g. F³A's 3dmm:12x19 with the engine's basis) wins
        return _CONVERTERS[s.name]()
    if s.name.startswith("3dmm"):
        return make_3dmm_converter(s)
    raise RigError(f"schema {s.name} has no converter to the character rig")


def convert(values, source: str | Schema, target: str | Schema) -> np.ndarray:
    """Convert ``(..., C_source)`` values between schemas through the character rig (lossy, see each converter)."""
    src, dst = get_converter(source), get_converter(target)
    if src.schema.name == dst.schema.name:
        return np.asarray(values, dtype=np.float64).copy()
    return dst.to_schema(src.from_schema(values))


def represents(schema: str | Schema, values: dict) -> bool:
    """Whether ``schema`` represents character-rig ``values`` (set on the rest pose): they survive the round trip
    character → schema → character (within 0.1 % of the largest)."""
    cs = character_schema()
    v = cs.vector(values)
    back = convert(convert(v, "character", schema), schema, "character")
    idx = [cs.index(n) for n in values]
    return bool(np.allclose(back[idx], v[idx], atol=1e-3 * np.abs(v[idx]).max()))
