import json

import numpy as np
import pytest

from keyface.core import rig
from keyface.core.errors import RigError

THA_NAMES = (
    [f"eyebrow_{k}_{s}" for k in ("troubled", "angry", "lowered", "raised", "happy", "serious")
     for s in ("left", "right")]
    + [f"eye_{k}_{s}" for k in ("wink", "happy_wink", "surprised", "relaxed", "unimpressed", "raised_lower_eyelid")
       for s in ("left", "right")]
    + ["iris_small_left", "iris_small_right"]
    + [f"mouth_{k}" for k in ("aaa", "iii", "uuu", "eee", "ooo", "delta")]
    + ["mouth_lowered_corner_left", "mouth_lowered_corner_right", "mouth_raised_corner_left",
       "mouth_raised_corner_right", "mouth_smirk", "iris_rotation_x", "iris_rotation_y", "head_x", "head_y", "neck_z",
       "body_y", "body_z", "breathing"]
)
AU_NAMES = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20",
            "AU23", "AU25", "AU26", "AU45"]


def test_tha45_order_and_ranges():
    s = rig.get_schema("tha45")
    assert list(s.names) == THA_NAMES
    assert s.index("mouth_aaa") == 26 and s.index("iris_rotation_x") == 37 and s.index("breathing") == 44
    for i, c in enumerate(s.channels):
        expected = (-1, 1) if 37 <= i <= 43 else (0, 1)
        assert (c.min, c.max) == expected, c.name
        assert c.default == 0
    assert s.channel("eye_wink_left").side == "L" and s.channel("mouth_aaa").side is None


def test_tha45_matches_official_names(shared):
    names = json.loads((shared / "thirdparty/tha4/reference/param_names.json").read_text())
    assert list(rig.get_schema("tha45").names) == names


def test_pose5_au17_kp_3dmm():
    p = rig.get_schema("pose5")
    assert p.names == ("eye_left", "eye_right", "mouth", "head_pitch", "head_yaw")
    assert list(p.mins) == [0, 0, 0, -1, -1] and list(p.maxs) == [1, 1, 1, 1, 1]
    a = rig.get_schema("au17")
    assert list(a.names) == AU_NAMES and set(a.mins) == {0} and set(a.maxs) == {5}
    np.testing.assert_allclose(a.to_network(np.full(17, 5.0)), 1.0)
    assert a.to_network(a.defaults).dtype == np.float32
    k = rig.get_schema("kp")
    assert len(k) == 3 + 3 + 45 and k.names[:3] == ("yaw", "pitch", "roll") and k.channel("yaw").unit == "deg"
    assert k.channel("yaw").max == 99
    d = rig.get_schema("3dmm:7x5")
    assert sum(n.startswith("id_") for n in d.names) == 7 and sum(n.startswith("exp_") for n in d.names) == 5
    assert d.channel("scale").default == 1 and rig.get_schema("3dmm:7x5") is d
    assert len(rig.get_schema("3dmm")) == 80 + 64 + 7


def test_character_rig_channels():
    c = rig.get_schema("character")
    for name in ("blink_left", "blink_right", "eye_smile_left", "eye_smile_right", "eyes_wide", "brow_raise_left",
                 "brow_raise_right", "brow_lower_left", "brow_lower_right", "iris_x", "iris_y", "iris_size",
                 "mouth_open", "mouth_wide", "mouth_round", "mouth_smile", "mouth_frown", "head_yaw", "head_pitch",
                 "head_roll", "body_yaw", "body_roll", "breathing"):
        assert name in c
    for ch in c.channels:
        assert ch.label and ch.group and ch.description


def test_unknown_schema():
    with pytest.raises(RigError, match="did you mean tha45"):
        rig.get_schema("tha44")


def test_validation_errors():
    s = rig.get_schema("au17")
    with pytest.raises(RigError, match="unknown channel 'AU13'.*did you mean"):
        s.vector({"AU13": 1})
    with pytest.raises(RigError, match="non-finite.*AU12"):
        s.vector({"AU12": float("nan")})
    with pytest.raises(RigError, match="non-finite.*AU45"):
        s.validate(np.r_[np.zeros(16), np.inf])
    with pytest.raises(RigError, match=r"AU12=7 not in \[0, 5\]"):
        s.vector({"AU12": 7})
    with pytest.raises(RigError, match="expects 17 values"):
        s.validate(np.zeros(5))
    with pytest.raises(RigError, match="expected a number"):
        s.vector({"AU12": "lots"})


def test_clamp_policy_warns_and_clamps():
    s = rig.get_schema("au17")
    with pytest.warns(rig.RigWarning, match="AU12=7"):
        v = s.vector({"AU12": 7, "AU45": -1}, policy="clamp")
    assert v[s.index("AU12")] == 5 and v[s.index("AU45")] == 0
    with pytest.raises(RigError, match="non-finite"):  # NaN is never clamped
        s.vector({"AU12": float("nan")}, policy="clamp")
    with pytest.raises(ValueError):
        s.validate(s.defaults, policy="ignore")


def test_validate_batches():
    s = rig.get_schema("pose5")
    batch = np.tile(s.defaults, (10, 1))
    assert s.validate(batch).shape == (10, 5)
    batch[7, 3] = 1.5
    with pytest.raises(RigError, match="head_pitch=1.5"):
        s.validate(batch)


def _char(**values):
    return rig.get_schema("character").vector(values)


def test_converter_known_values():
    c = _char(blink_left=1, mouth_open=0.5, mouth_smile=1, head_yaw=30, head_pitch=-10, brow_angle_right=-0.5)
    pose5 = rig.get_converter("pose5").to_schema(c)
    np.testing.assert_allclose(pose5, [0, 1, 0.5, -0.5, 1])  # eye_left closed; yaw 30° clipped to +1 (20°)
    tha = dict(zip(THA_NAMES, rig.get_converter("tha45").to_schema(c), strict=True))
    assert tha["eye_wink_left"] == 1 and tha["eye_wink_right"] == 0
    assert tha["mouth_raised_corner_left"] == tha["mouth_raised_corner_right"] == 1
    assert tha["head_y"] == -1 and tha["head_x"] == pytest.approx(-10 / 15)  # THA: head_y < 0 turns toward our +yaw
    assert tha["eyebrow_angry_right"] == 0.5 and tha["eyebrow_troubled_right"] == 0
    au = dict(zip(AU_NAMES, rig.get_converter("au17").to_schema(c), strict=True))
    assert au["AU45"] == 2.5 and au["AU12"] == 5 and au["AU26"] == 2.5 and au["AU25"] == 5
    kp = rig.get_converter("kp").to_schema(c)
    assert tuple(kp[:3]) == (30, -10, 0) and not kp[3:6].any()
    # the expression deltas are the engine's exact motion of the 15 keypoint landmarks (head-box units)
    from keyface.core.synth import face as fm

    values = dict(zip(rig.character_schema().names, c, strict=True))
    rest = dict(zip(rig.character_schema().names, rig.character_schema().defaults, strict=True))
    moved = fm.landmarks(np.zeros(fm.N_ID), values) - fm.landmarks(np.zeros(fm.N_ID), rest)
    idx = [fm.LANDMARK_NAMES.index(n) for n in fm.KP_LANDMARKS]
    np.testing.assert_allclose(kp[6:].reshape(15, 3), moved[idx] / 2, atol=1e-9)
    upper_lid = fm.KP_LANDMARKS.index("eye_left_up_1")  # the blink moves a keypoint
    assert kp[6 + 3 * upper_lid + 1] > 0.01


def _representable(name, rng, n=64):
    """Random character values every channel of which the schema carries (others at rest)."""
    s = rig.get_schema("character")
    v = rng.uniform(s.mins, s.maxs, size=(n, len(s)))
    conv = rig.get_converter(name)
    for lost in conv.lost_to:
        v[:, s.index(lost)] = s.channel(lost).default
    if name == "pose5":
        v[:, [s.index("head_yaw"), s.index("head_pitch")]] = rng.uniform(-20, 20, (n, 2))
    if name == "tha45":
        for ch in ("head_yaw", "head_pitch", "head_roll", "body_yaw", "body_roll"):
            v[:, s.index(ch)] = rng.uniform(-15, 15, n)
        v[:, s.index("iris_size")] = rng.uniform(-1, 0, n)
    if name == "au17":  # bilateral, brow angle only raising the inner brow, within AU01's range
        for pair in ("blink", "eye_smile", "brow_raise", "brow_lower", "brow_angle"):
            v[:, s.index(f"{pair}_right")] = v[:, s.index(f"{pair}_left")] = rng.uniform(0, 0.5, n)
    return v


@pytest.mark.parametrize("name", ["pose5", "tha45", "au17", "kp", "3dmm", "character"])
def test_converter_round_trip(name):
    rng = np.random.default_rng(1)
    conv = rig.get_converter(name)
    v = _representable(name, rng)
    there = conv.to_schema(v)
    assert there.shape == (64, len(conv.schema))
    conv.schema.validate(there)  # converters never produce out-of-range values
    if name == "kp":  # expressions come back by least squares, clipped to the rig: exact for the pose, close round
        head = [rig.character_schema().index(f"head_{a}") for a in ("yaw", "pitch", "roll")]
        np.testing.assert_allclose(conv.from_schema(there)[:, head], v[:, head], atol=1e-12)
        np.testing.assert_allclose(conv.to_schema(conv.from_schema(there)), there, atol=0.02)
        return
    np.testing.assert_allclose(conv.from_schema(there), v, atol=1e-12)
    # and back: schema values that came from the character rig survive the trip the other way
    np.testing.assert_allclose(conv.to_schema(conv.from_schema(there)), there, atol=1e-12)


@pytest.mark.parametrize("name", ["pose5", "tha45", "au17", "kp", "3dmm"])
def test_converter_outputs_in_range_for_any_input(name):
    rng = np.random.default_rng(2)
    conv = rig.get_converter(name)
    c = rig.get_schema("character")
    out = conv.to_schema(rng.uniform(c.mins, c.maxs, (100, len(c))))
    conv.schema.validate(out)
    back = conv.from_schema(rng.uniform(conv.schema.mins, conv.schema.maxs, (100, len(conv.schema))))
    c.validate(back)
    for lost in conv.lost_to:
        assert lost in c
    for lost in conv.lost_from:
        assert lost in conv.schema


def test_lost_channels_really_are_lost():
    """Every channel a converter declares lost (character → schema) is one whose change the schema does not see."""
    c = rig.get_schema("character")
    for name in ("pose5", "kp", "3dmm"):
        conv = rig.get_converter(name)
        for lost in conv.lost_to:
            if "clipped" in conv.lost_to[lost]:
                continue
            a = c.defaults.copy()
            a[c.index(lost)] = c.channel(lost).max
            np.testing.assert_array_equal(conv.to_schema(a), conv.to_schema(c.defaults), err_msg=f"{name}:{lost}")


def test_3dmm_with_expression_basis():
    rng = np.random.default_rng(3)
    schema = rig.get_schema("3dmm:4x30")
    basis = rng.normal(size=(30, len(rig.EXPRESSION_CHANNELS))) * 0.1
    conv = rig.make_3dmm_converter(schema, basis)
    assert not any(n in conv.lost_to for n in rig.EXPRESSION_CHANNELS)
    c = rig.get_schema("character")
    v = c.defaults.copy()
    v[c.index("mouth_open")] = 0.6
    v[c.index("head_roll")] = 12
    there = conv.to_schema(v)
    exp = there[[schema.index(f"exp_{i:02d}") for i in range(30)]]
    np.testing.assert_allclose(exp, basis[:, rig.EXPRESSION_CHANNELS.index("mouth_open")] * 0.6)
    np.testing.assert_allclose(conv.from_schema(there), v, atol=1e-9)
    with pytest.raises(RigError, match="expression basis"):
        rig.make_3dmm_converter(schema, basis[:5])


def test_convert_between_schemas():
    au = rig.get_schema("au17").vector({"AU12": 5, "AU45": 5})
    tha = dict(zip(THA_NAMES, rig.convert(au, "au17", "tha45"), strict=True))
    assert tha["mouth_raised_corner_left"] == 1 and tha["eye_wink_left"] == tha["eye_wink_right"] == 1
    np.testing.assert_array_equal(rig.convert(au, "au17", "au17"), au)
    with pytest.raises(RigError, match="expects 17 values"):
        rig.convert(np.zeros(3), "au17", "tha45")
