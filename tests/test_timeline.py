import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyface.core import rig
from keyface.core.errors import RigError, TimelineError
from keyface.core.timeline import INTERPOLATIONS, Key, Timeline, Track, as_frame


def test_linear_midpoints_and_hold():
    t = Track([Key(0, 0.0, "linear"), Key(10, 4.0, "linear"), Key(20, 2.0)])
    np.testing.assert_allclose(t.sample([5, 2.5, 15, 12.5]), [2.0, 1.0, 3.0, 3.5])
    np.testing.assert_allclose(t.sample([-100, -0.5, 20, 20.25, 1e6]), [0, 0, 2, 2, 2])  # hold outside the keys


def test_constant_holds_until_next_key():
    t = Track([Key(0, 1.0, "constant"), Key(10, 3.0, "constant"), Key(20, 0.0)])
    np.testing.assert_array_equal(t.sample([0, 9.999, 10, 19.5, 20, 30]), [1, 1, 3, 3, 0, 0])


@pytest.mark.parametrize(("mode", "closed"), [
    ("ease_in", lambda s: s * s),
    ("ease_out", lambda s: 1 - (1 - s) ** 2),
    ("ease_in_out", lambda s: s * s * (3 - 2 * s)),
    ("linear", lambda s: s),
])
def test_ease_closed_forms(mode, closed):
    t = Track([Key(4, 1.0, mode), Key(12, 3.0)])
    s = np.linspace(0, 1, 17)
    np.testing.assert_allclose(t.sample(4 + 8 * s), 1 + 2 * closed(s), atol=1e-12)


def test_two_auto_bezier_keys_are_smoothstep():
    # Flat auto handles at the first and last key, a third of the gap long: the cubic Hermite with zero end slopes.
    t = Track([Key(0, 2.0), Key(30, -1.0)])
    s = np.linspace(0, 1, 31)
    np.testing.assert_allclose(t.sample(30 * s), 2 - 3 * (3 * s**2 - 2 * s**3), atol=1e-12)


def _slope(track, f, h=1e-6):
    return (track.sample(f + h) - track.sample(f - h)) / (2 * h)


def test_auto_clamped_flat_at_extremum_smooth_elsewhere():
    t = Track([Key(0, 0.0), Key(10, 1.0), Key(20, 0.0), Key(25, 2.0), Key(40, 3.0)])
    assert abs(_slope(t, 10.0)) < 1e-6 and abs(_slope(t, 20.0)) < 1e-6  # local max and min: flat
    assert _slope(t, 25.0) > 0.05  # interior key on a rising run keeps a slope ...
    assert _slope(t, 25.0 - 1e-4) == pytest.approx(_slope(t, 25.0 + 1e-4), rel=1e-3)  # ... continuous (C1)
    assert t.sample(10.0) == 1.0 and t.sample(np.linspace(0, 20, 201)).max() == pytest.approx(1.0)


def test_auto_interior_slope_is_harmonic_mean():
    t = Track([Key(0, 0.0), Key(10, 1.0), Key(30, 5.0)])
    d0, d1, h0, h1 = 0.1, 0.2, 10, 20
    w1, w2 = 2 * h1 + h0, h1 + 2 * h0
    assert _slope(t, 10.0) == pytest.approx((w1 + w2) / (w1 / d0 + w2 / d1), rel=1e-6)


def test_user_handles_at_a_third_give_hermite():
    m0, m1 = 0.5, -0.25
    t = Track([Key(0, 0.0, handle_right=(4, 4 * m0)), Key(12, 1.0, handle_left=(-4, -4 * m1))])
    s = np.linspace(0, 1, 13)
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    np.testing.assert_allclose(t.sample(12 * s), h10 * 12 * m0 + h01 + h11 * 12 * m1, atol=1e-12)
    assert h00[0] == 1  # (value 0 at the first key contributes nothing)


def test_user_handles_overshoot_and_are_kept_a_function():
    t = Track([Key(0, 0.0, handle_right=(9, 3.0)), Key(10, 1.0, handle_left=(-9, 0.0))])  # too long: scaled
    f = np.linspace(0, 10, 1001)
    v = t.sample(f)
    assert v.max() > 1.0  # a user handle may overshoot ...
    assert np.all(np.isfinite(v)) and v[0] == 0 and v[-1] == pytest.approx(1.0)
    # handles scaled by 10/18: the curve is the Bézier with those control points, sampled by its frame coordinate
    k = 10 / 18
    px, py = np.array([0, 9 * k, 10 - 9 * k, 10]), np.array([0, 3 * k, 1, 1])
    u = np.linspace(0, 1, 50)
    bern = np.stack([(1 - u) ** 3, 3 * (1 - u) ** 2 * u, 3 * (1 - u) * u**2, u**3], 1)
    np.testing.assert_allclose(t.sample(bern @ px), bern @ py, atol=1e-9)


def test_timeline_clips_overshoot_to_channel_range():
    tl = Timeline(rig.get_schema("pose5"))
    tl.insert_key("mouth", 0, 0.0, handle_right=(5, 5.0))
    tl.insert_key("mouth", 10, 1.0)
    assert tl.sample(np.linspace(0, 10, 101), clip=False)[:, 2].max() > 1
    assert tl.sample(np.linspace(0, 10, 101))[:, 2].max() == 1


def test_vectorised_timeline_sampling():
    s = rig.get_schema("au17")
    tl = Timeline(s)
    tl.insert_key("AU12", 0, 0, "linear")
    tl.insert_key("AU12", 10, 5)
    tl.insert_key("AU45", 5, 2)
    out = tl.sample(np.arange(0, 11))
    assert out.shape == (11, 17)
    np.testing.assert_allclose(out[:, s.index("AU12")], np.arange(11) * 0.5)
    np.testing.assert_array_equal(out[:, s.index("AU45")], 2)  # a single key holds everywhere
    assert not out[:, s.index("AU01")].any()  # untracked: default
    assert tl.sample_dict(4)["AU12"] == 2.0
    assert tl.key_frames() == [0, 5, 10]


def test_edit_operations():
    t = Track()
    assert t.sample([3]).tolist() == [0.0]
    t.insert(10, 1.0, "linear")
    t.insert(0, 0.0, "constant")
    t.insert(10, 2.0)  # replace keeps the interpolation
    assert [k.frame for k in t.keys] == [0, 10] and t.key_at(10).value == 2 and t.key_at(10).interpolation == "linear"
    assert t.sample([5]).tolist() == [0.0]
    t.update(0, interpolation="linear")
    assert t.sample([5]).tolist() == [1.0]  # the cache is refreshed after edits
    t.move(10, 20)
    assert [k.frame for k in t.keys] == [0, 20] and t.sample([10]).tolist() == [1.0]
    t.insert(30, 5.0)
    with pytest.raises(TimelineError, match="already exists at frame 30"):
        t.move(20, 30)
    t.move(20, 30, replace_existing=True)
    assert [(k.frame, k.value) for k in t.keys] == [(0, 0.0), (30, 2.0)]
    t.delete(0)
    assert len(t) == 1
    with pytest.raises(TimelineError, match="no key at frame 7"):
        t.delete(7)


def test_timeline_edit_validation():
    tl = Timeline(rig.get_schema("au17"))
    with pytest.raises(RigError, match="unknown channel"):
        tl.insert_key("AU99", 0, 1)
    with pytest.raises(TimelineError, match="outside its range"):
        tl.insert_key("AU12", 0, 6)
    with pytest.raises(TimelineError, match="finite"):
        tl.insert_key("AU12", 0, float("nan"))
    tl.insert_key("AU12", 0, 1)
    tl.delete_key("AU12", 0)
    assert "AU12" not in tl.tracks


@pytest.mark.parametrize("bad", [1.5, True, float("nan"), "3", None])
def test_frames_must_be_integers(bad):
    with pytest.raises(TimelineError, match="integer frame"):
        as_frame(bad)


def test_key_validation():
    assert Key(3.0, 1).frame == 3
    with pytest.raises(TimelineError, match="unknown interpolation"):
        Key(0, 1, "cubic")
    with pytest.raises(TimelineError, match="back in time"):
        Key(0, 1, handle_left=(1, 0))
    with pytest.raises(TimelineError, match="forward in time"):
        Key(0, 1, handle_right=(-1, 0))
    with pytest.raises(TimelineError, match="two keys at frame 2"):
        Track([Key(2, 0), Key(2, 1)])
    with pytest.raises(TimelineError, match="finite"):
        Track([Key(0, 0)]).sample([np.nan])


keys_strategy = st.dictionaries(
    st.integers(-50, 200), st.floats(-5, 5, allow_nan=False), min_size=1, max_size=12
)


@settings(max_examples=200, deadline=None)
@given(keys_strategy, st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_auto_bezier_never_overshoots(keys, fractions):
    t = Track([Key(f, v) for f, v in keys.items()])
    frames = sorted(keys)
    np.testing.assert_array_equal(t.sample(frames), [keys[f] for f in frames])  # passes through its keys
    for a, b in zip(frames, frames[1:], strict=False):
        v = t.sample(a + (b - a) * np.asarray(fractions))
        lo, hi = min(keys[a], keys[b]), max(keys[a], keys[b])
        assert np.all(v >= lo - 1e-9) and np.all(v <= hi + 1e-9)


@settings(max_examples=150, deadline=None)
@given(keys_strategy, st.lists(st.sampled_from(INTERPOLATIONS), min_size=12, max_size=12),
       st.lists(st.floats(-60, 260, allow_nan=False), min_size=1, max_size=30))
def test_sampling_any_modes(keys, modes, frames):
    t = Track([Key(f, v, modes[i]) for i, (f, v) in enumerate(keys.items())])
    ks = sorted(keys)
    np.testing.assert_array_equal(t.sample(ks), [keys[f] for f in ks])
    v = t.sample(frames)
    assert v.shape == (len(frames),)
    # no interpolation mode other than user handles leaves the range of its segment's two keys
    assert np.all(v >= min(keys.values()) - 1e-9) and np.all(v <= max(keys.values()) + 1e-9)
    # vectorised sampling equals one-at-a-time sampling
    np.testing.assert_array_equal(v, [t.sample([f])[0] for f in frames])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=10))
def test_monotone_keys_give_monotone_curve(values):
    values = np.cumsum(values)
    t = Track([Key(3 * i, v) for i, v in enumerate(values)])
    assert np.all(np.diff(t.sample(np.linspace(0, 3 * (len(values) - 1), 400))) >= -1e-12)


def test_reduce_track_keeps_few_keys_within_the_tolerance():
    from keyface.core.timeline import reduce_curves, reduce_track

    frames = np.arange(120)
    curve = 10 * np.sin(frames / 12) + np.where(frames > 70, 5.0, 0.0)
    for interpolation in ("bezier", "linear"):
        track = reduce_track(frames, curve, 0.2, interpolation=interpolation)
        assert 4 <= len(track) < 40
        assert np.abs(track.sample(frames) - curve).max() <= 0.2
        assert all(k.interpolation == interpolation for k in track.keys)
    assert len(reduce_track(frames, np.full(120, 0.05), 0.1)) == 0  # within the tolerance of the default
    flat = reduce_track(frames, np.full(120, 3.0), 0.1)
    assert [(k.frame, k.value) for k in flat.keys] == [(0, 3.0)]
    with pytest.raises(TimelineError):
        reduce_track(frames, np.full(120, np.nan), 0.1)
    with pytest.raises(TimelineError):
        reduce_track(frames, curve, 0.0)
    schema = rig.get_schema("pose5")
    values = np.zeros((120, len(schema)))
    values[:, schema.index("head_yaw")] = np.clip(curve / 10, -1, 1)
    values[:, schema.index("mouth")] = 2.0  # out of range: clipped to 1
    timeline, report = reduce_curves(schema, frames, values, 0.01)
    assert report["frames"] == 120 and report["keys"] == sum(len(t) for t in timeline.tracks.values())
    assert report["max_error_fraction"] <= 0.01
    np.testing.assert_allclose(timeline.sample(frames)[:, schema.index("mouth")], 1.0)
