"""Keyframe timeline: one track per channel, keys at integer frames, sampling at any (fractional) frame.

Interpolation is set per key and shapes the segment that *starts* at that key (as in Blender):

``constant``     the key's value until the next key.
``linear``       straight line to the next key.
``bezier``       cubic Bézier through the two keys' handles (the default).
``ease_in``      v0 + (v1 - v0)·t²            (slow start)
``ease_out``     v0 + (v1 - v0)·(1 - (1 - t)²) (slow end)
``ease_in_out``  v0 + (v1 - v0)·t²(3 - 2t)     (smoothstep)
                 with t = (frame - f0) / (f1 - f0).

Before the first key and after the last the track holds that key's value; an empty track gives the channel default.

**Handles.** A key's ``handle_left``/``handle_right`` are ``(dframe, dvalue)`` offsets from the key. A handle left as
``None`` is *auto-clamped*, Blender-style: its frame offset is one third of the gap to the neighbouring key and its
slope is

* 0 at the first and last key (so the curve eases into the hold) and at a local extremum (value ≥ or ≤ both
  neighbours: the clamping that stops overshoot),
* elsewhere the weighted harmonic mean of the two neighbouring secants (Fritsch–Butland, computed with scipy's PCHIP).

That slope never exceeds three times either secant, which keeps every auto segment monotone: an auto-clamped curve
never overshoots between two keys (stronger than Blender's auto-clamped, which can overshoot slightly next to
extrema). With both handles at one third of the gap the Bézier's frame coordinate is linear in its parameter and the
segment is the cubic Hermite spline with those slopes. User handles may overshoot; their frame offsets are clamped
to the segment (a handle cannot point past the neighbouring key) and, where the two handles of a segment together
are longer than it, both are scaled down so the curve stays a function of the frame (as Blender does).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np
from scipy.interpolate import PchipInterpolator

from .errors import TimelineError
from .rig import Schema

INTERPOLATIONS = ("constant", "linear", "bezier", "ease_in", "ease_out", "ease_in_out")
DEFAULT_INTERPOLATION = "bezier"
_BISECT_STEPS = 48  # frame → Bézier parameter for user handles, to ~1e-14 of the segment


def as_frame(value) -> int:
    """An integer frame from an int or an integral float; anything else is a :class:`TimelineError`."""
    if isinstance(value, bool):
        raise TimelineError(f"expected an integer frame, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise TimelineError(f"expected an integer frame, got {value!r}")


def _handle(value, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        dx, dy = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TimelineError(f"{name}: expected [dframe, dvalue], got {value!r}") from None
    if not (math.isfinite(dx) and math.isfinite(dy)):
        raise TimelineError(f"{name}: handle must be finite, got {value!r}")
    return dx, dy


@dataclass(frozen=True)
class Key:
    frame: int
    value: float
    interpolation: str = DEFAULT_INTERPOLATION
    handle_left: tuple[float, float] | None = None
    handle_right: tuple[float, float] | None = None

    def __post_init__(self):
        object.__setattr__(self, "frame", as_frame(self.frame))
        try:
            value = float(self.value)
        except (TypeError, ValueError):
            raise TimelineError(f"key value must be a number, got {self.value!r}") from None
        if not math.isfinite(value):
            raise TimelineError(f"key value must be finite, got {self.value!r}")
        object.__setattr__(self, "value", value)
        if self.interpolation not in INTERPOLATIONS:
            raise TimelineError(f"unknown interpolation {self.interpolation!r} (one of {', '.join(INTERPOLATIONS)})")
        left, right = _handle(self.handle_left, "handle_left"), _handle(self.handle_right, "handle_right")
        if left is not None and left[0] > 0:
            raise TimelineError("handle_left must point back in time (dframe ≤ 0)")
        if right is not None and right[0] < 0:
            raise TimelineError("handle_right must point forward in time (dframe ≥ 0)")
        object.__setattr__(self, "handle_left", left)
        object.__setattr__(self, "handle_right", right)


_UNSET = object()


class Track:
    """The keys of one channel, kept sorted by frame (at most one key per frame)."""

    def __init__(self, keys: Iterable[Key] = (), default: float = 0.0):
        self.default = float(default)
        self._keys: list[Key] = []
        self._cache = None
        for key in keys:
            if any(k.frame == key.frame for k in self._keys):
                raise TimelineError(f"two keys at frame {key.frame}")
            self._keys.append(key)
        self._keys.sort(key=lambda k: k.frame)

    # ---- editing
    @property
    def keys(self) -> tuple[Key, ...]:
        return tuple(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def _find(self, frame: int) -> int | None:
        frames = [k.frame for k in self._keys]
        i = bisect.bisect_left(frames, frame)
        return i if i < len(frames) and frames[i] == frame else None

    def key_at(self, frame) -> Key | None:
        i = self._find(as_frame(frame))
        return None if i is None else self._keys[i]

    def insert(self, frame, value, interpolation: str | None = None, handle_left=_UNSET, handle_right=_UNSET) -> Key:
        """Insert a key, or replace the value of the key at that frame (keeping its interpolation and handles
        unless new ones are given)."""
        frame = as_frame(frame)
        i = self._find(frame)
        old = self._keys[i] if i is not None else Key(frame, value)
        key = Key(
            frame,
            value,
            interpolation or old.interpolation,
            old.handle_left if handle_left is _UNSET else handle_left,
            old.handle_right if handle_right is _UNSET else handle_right,
        )
        if i is None:
            bisect.insort(self._keys, key, key=lambda k: k.frame)
        else:
            self._keys[i] = key
        self._cache = None
        return key

    def update(self, frame, **fields) -> Key:
        """Change fields (value, interpolation, handle_left, handle_right) of the key at ``frame``."""
        i = self._require(frame)
        self._keys[i] = replace(self._keys[i], **fields)
        self._cache = None
        return self._keys[i]

    def delete(self, frame) -> Key:
        i = self._require(frame)
        self._cache = None
        return self._keys.pop(i)

    def move(self, frame, new_frame, replace_existing: bool = False) -> Key:
        """Move a key in time. Moving onto another key is an error unless ``replace_existing``."""
        i = self._require(frame)
        new_frame = as_frame(new_frame)
        if new_frame == self._keys[i].frame:
            return self._keys[i]
        j = self._find(new_frame)
        if j is not None and not replace_existing:
            raise TimelineError(f"a key already exists at frame {new_frame}")
        key = replace(self._keys.pop(i), frame=new_frame)
        if j is not None:
            self._keys.pop(self._find(new_frame))
        bisect.insort(self._keys, key, key=lambda k: k.frame)
        self._cache = None
        return key

    def _require(self, frame) -> int:
        i = self._find(as_frame(frame))
        if i is None:
            raise TimelineError(f"no key at frame {frame}")
        return i

    # ---- evaluation
    def _arrays(self):
        """Per-key arrays with every handle resolved (auto handles computed)."""
        if self._cache is None:
            n = len(self._keys)
            x = np.array([k.frame for k in self._keys], dtype=np.float64)
            y = np.array([k.value for k in self._keys], dtype=np.float64)
            slope = np.zeros(n)
            if n >= 3:
                with np.errstate(over="ignore", divide="ignore"):  # tiny secants: the slope underflows to 0
                    slope[1:-1] = PchipInterpolator(x, y).derivative()(x[1:-1])
            gaps = np.diff(x)
            left = np.zeros((n, 2))
            right = np.zeros((n, 2))
            if n >= 2:
                right[:-1, 0] = gaps / 3
                left[1:, 0] = -gaps / 3
            right[:, 1] = slope * right[:, 0]
            left[:, 1] = slope * left[:, 0]
            for i, k in enumerate(self._keys):
                if k.handle_left is not None:
                    left[i] = k.handle_left
                if k.handle_right is not None:
                    right[i] = k.handle_right
            modes = np.array([INTERPOLATIONS.index(k.interpolation) for k in self._keys], dtype=np.int64)
            self._cache = (x, y, left, right, modes)
        return self._cache

    def sample(self, frames) -> np.ndarray:
        """Values at ``frames`` (any shape, fractional allowed); same shape, float64."""
        f = np.asarray(frames, dtype=np.float64)
        if not np.all(np.isfinite(f)):
            raise TimelineError("frames to sample must be finite")
        if not self._keys:
            return np.full(f.shape, self.default)
        x, y, left, right, modes = self._arrays()
        flat = f.ravel()
        out = np.empty_like(flat)
        if len(x) == 1:
            out[:] = y[0]
            return out.reshape(f.shape)
        seg = np.clip(np.searchsorted(x, flat, side="right") - 1, 0, len(x) - 2)
        x0, x1, y0, y1 = x[seg], x[seg + 1], y[seg], y[seg + 1]
        gap = x1 - x0
        t = np.clip((flat - x0) / gap, 0.0, 1.0)  # clipping gives the hold before the first / after the last key
        mode = modes[seg]
        ease = {
            INTERPOLATIONS.index("constant"): np.where(t >= 1.0, 1.0, 0.0),
            INTERPOLATIONS.index("linear"): t,
            INTERPOLATIONS.index("ease_in"): t * t,
            INTERPOLATIONS.index("ease_out"): 1.0 - (1.0 - t) ** 2,
            INTERPOLATIONS.index("ease_in_out"): t * t * (3.0 - 2.0 * t),
        }
        out[:] = y0
        for m, s in ease.items():
            sel = mode == m
            out[sel] = (1.0 - s[sel]) * y0[sel] + s[sel] * y1[sel]  # exact at both keys
        sel = mode == INTERPOLATIONS.index("bezier")
        if sel.any():
            out[sel] = _bezier(flat[sel], t[sel], seg[sel], x, y, left, right)
        return out.reshape(f.shape)


def _bezier(f, t_lin, seg, x, y, left, right) -> np.ndarray:
    x0, x1, y0, y1 = x[seg], x[seg + 1], y[seg], y[seg + 1]
    gap = x1 - x0
    hr = right[seg].copy()
    hl = left[seg + 1].copy()
    # Clamp handle frame offsets into the segment, then shrink both if together they are longer than it.
    for h, lo, hi in ((hr, 0.0, gap), (hl, -gap, 0.0)):
        dx = np.clip(h[:, 0], lo, hi)
        scale = np.where(h[:, 0] != 0, dx / np.where(h[:, 0] != 0, h[:, 0], 1.0), 1.0)
        h *= scale[:, None]
    total = hr[:, 0] - hl[:, 0]
    shrink = np.where(total > gap, gap / np.maximum(total, 1e-300), 1.0)
    hr *= shrink[:, None]
    hl *= shrink[:, None]
    px = np.stack([x0, x0 + hr[:, 0], x1 + hl[:, 0], x1], axis=1)
    py = np.stack([y0, y0 + hr[:, 1], y1 + hl[:, 1], y1], axis=1)
    # Frame coordinate linear in t when both handles sit at a third of the gap (every auto handle): t = t_lin.
    linear_x = np.isclose(hr[:, 0], gap / 3, rtol=0, atol=1e-12 * gap) & np.isclose(
        hl[:, 0], -gap / 3, rtol=0, atol=1e-12 * gap
    )
    t = t_lin.copy()
    solve = ~linear_x
    if solve.any():
        lo, hi = np.zeros(solve.sum()), np.ones(solve.sum())
        target = np.clip(f[solve], x0[solve], x1[solve])
        cx = px[solve]
        for _ in range(_BISECT_STEPS):
            mid = 0.5 * (lo + hi)
            below = _cubic(cx, mid) < target
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        t[solve] = 0.5 * (lo + hi)
    t = np.where(f <= x0, 0.0, np.where(f >= x1, 1.0, t))
    return _cubic(py, t)


def _cubic(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    u = 1.0 - t
    return u * u * u * p[:, 0] + 3 * u * u * t * p[:, 1] + 3 * u * t * t * p[:, 2] + t * t * t * p[:, 3]


class Timeline:
    """Tracks for the channels of one schema. Channels without a track hold their default."""

    def __init__(self, schema: Schema, tracks: Mapping[str, Track] | None = None):
        self.schema = schema
        self.tracks: dict[str, Track] = {}
        for name, track in (tracks or {}).items():
            self.schema.index(name)  # raises on an unknown channel
            self.tracks[name] = track

    def track(self, channel: str) -> Track:
        """The channel's track, created empty if it has none."""
        if channel not in self.tracks:
            self.tracks[channel] = Track(default=self.schema.channel(channel).default)
        return self.tracks[channel]

    def _check_value(self, channel: str, value) -> float:
        ch = self.schema.channel(channel)
        v = Key(0, value).value
        if not ch.min <= v <= ch.max:
            raise TimelineError(f"{channel}={v:g} is outside its range [{ch.min:g}, {ch.max:g}]")
        return v

    def insert_key(self, channel: str, frame, value, interpolation: str | None = None, **handles) -> Key:
        return self.track(channel).insert(frame, self._check_value(channel, value), interpolation, **handles)

    def delete_key(self, channel: str, frame) -> Key:
        key = self.track(channel).delete(frame)
        if not self.tracks[channel]:
            del self.tracks[channel]
        return key

    def move_key(self, channel: str, frame, new_frame, replace_existing: bool = False) -> Key:
        return self.track(channel).move(frame, new_frame, replace_existing)

    def key_frames(self) -> list[int]:
        return sorted({k.frame for t in self.tracks.values() for k in t.keys})

    def sample(self, frames, clip: bool = True) -> np.ndarray:
        """``(F, C)`` values at ``frames`` (1-D). With ``clip`` (the default), values a user handle pushes past a
        channel's range are held at its limit, like a slider's end stop; pass ``clip=False`` to see them."""
        f = np.atleast_1d(np.asarray(frames, dtype=np.float64))
        if f.ndim != 1:
            raise TimelineError("frames to sample must be a 1-D sequence")
        out = np.broadcast_to(self.schema.defaults, (len(f), len(self.schema))).copy()
        for name, track in self.tracks.items():
            out[:, self.schema.index(name)] = track.sample(f)
        return np.clip(out, self.schema.mins, self.schema.maxs) if clip else out

    def sample_dict(self, frame: float) -> dict[str, float]:
        return self.schema.to_dict(self.sample([frame])[0])


def reduce_track(frames, values, tolerance: float, default: float = 0.0,
                 interpolation: str = DEFAULT_INTERPOLATION) -> Track:
    """The few keys that reproduce a sampled curve within ``tolerance``: a track through the first and last sample,
    then, while the track (sampled as the timeline samples it) misses some sample by more than the tolerance, a key at
    the worst one (greedy insertion, as Ramer–Douglas–Peucker on the real interpolation). A curve that stays within
    the tolerance of ``default`` gets no keys; one within the tolerance of its first value gets one key."""
    f = np.asarray(frames, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    if f.ndim != 1 or f.shape != v.shape or not len(f):
        raise TimelineError("reduce_track needs one value per frame")
    if not np.isfinite(v).all():
        raise TimelineError("reduce_track: the curve has non-finite values")
    if tolerance <= 0:
        raise TimelineError("reduce_track: the tolerance must be positive")
    track = Track(default=default)
    if np.abs(v - default).max() <= tolerance:
        return track
    track.insert(int(f[0]), float(v[0]), interpolation)
    if np.abs(v - v[0]).max() <= tolerance:
        return track
    track.insert(int(f[-1]), float(v[-1]), interpolation)
    while True:
        err = np.abs(track.sample(f) - v)
        worst = int(np.argmax(err))
        if err[worst] <= tolerance or track.key_at(int(f[worst])) is not None:
            return track
        track.insert(int(f[worst]), float(v[worst]), interpolation)


def reduce_curves(schema: Schema, frames, values, tolerance: float,
                  interpolation: str = DEFAULT_INTERPOLATION) -> tuple[Timeline, dict]:
    """:func:`reduce_track` for every channel of ``(F, C)`` values in ``schema``; the tolerance is a fraction of each
    channel's range, and values are first clipped to it. Returns the timeline and a report: keys written, frames, and
    the largest error of the reduced curves against the (clipped) samples, in each channel's units and as a fraction
    of its range."""
    values = np.asarray(values, dtype=np.float64)
    frames = np.asarray(frames, dtype=np.int64)
    tracks, worst, worst_frac, keys = {}, 0.0, 0.0, 0
    for i, ch in enumerate(schema.channels):
        span = ch.max - ch.min
        curve = np.clip(values[:, i], ch.min, ch.max)  # keys stay in the channel's range
        track = reduce_track(frames, curve, tolerance * span, ch.default, interpolation)
        if len(track):
            tracks[ch.name] = track
            keys += len(track)
        err = np.abs(track.sample(frames) - curve).max()
        worst, worst_frac = max(worst, err), max(worst_frac, err / span)
    report = {"frames": len(frames), "keys": keys, "channels_keyed": len(tracks), "max_error": float(worst),
              "max_error_fraction": float(worst_frac)}
    return Timeline(schema, tracks), report
