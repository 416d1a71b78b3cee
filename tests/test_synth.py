import json

import cv2
import numpy as np
import pytest

from keyface.core.cli import main
from keyface.core.rig import EXPRESSION_CHANNELS, character_schema, convert, get_schema
from keyface.core.synth import face as fm
from keyface.core.synth.character import sample_character
from keyface.core.synth.dataset import OnTheFlyDataset, ShardDataset, SynthConfig, character_seeds, write_dataset
from keyface.core.synth.render import REST, Renderer
from keyface.core.synth.sample import ENGINE_3DMM, PairRenderer, engine_3dmm_converter, sample_pose


def _premul(im):
    return np.concatenate([im[..., :3] * im[..., 3:], im[..., 3:]], axis=2)


def _psnr(a, b):
    return 10 * np.log10(1 / max(float(((a - b) ** 2).mean()), 1e-12))


def test_deterministic_and_varied():
    a = Renderer(sample_character(5), (96, 96)).render({"mouth_open": 0.4}).image
    b = Renderer(sample_character(5), (96, 96)).render({"mouth_open": 0.4}).image
    assert np.array_equal(a, b)
    others = [Renderer(sample_character(s), (96, 96)).render().image for s in range(6, 12)]
    for o in others:  # every character differs from the others in many pixels
        assert (np.abs(o - a).max(axis=2) > 0.1).mean() > 0.05
    styles = {sample_character(s).style["hair"] for s in range(16)}
    assert len(styles) >= 3


def test_rest_parameters_render_the_rest_image():
    pr = PairRenderer(sample_character(2), (128, 128))
    s = pr.sample(dict(REST))
    assert np.array_equal(s.posed, s.rest)
    assert not s.flow.any()
    assert s.visible.mean() > 0.97  # all but anti-aliased edges
    assert s.face_box == s.rest_face_box


POSES = [
    {"head_yaw": 22, "mouth_open": 1.0, "blink_left": 1.0},
    {"head_pitch": -15, "head_roll": 10, "eye_smile_left": 1, "eye_smile_right": 1, "mouth_smile": 1},
    {"body_yaw": 12, "body_roll": 6, "breathing": 1, "iris_x": 1, "iris_size": 1, "brow_raise_left": 1},
]


@pytest.mark.parametrize("values", POSES)
def test_ground_truth_flow_reproduces_the_posed_image(values):
    for seed in (1, 4):
        s = PairRenderer(sample_character(seed), (256, 256)).sample(values)
        h, w = s.flow.shape[:2]
        py, px = np.mgrid[0:h, 0:w].astype(np.float32)
        warped = cv2.remap(_premul(s.rest), px + s.flow[..., 0], py + s.flow[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        v = s.visible
        assert v.mean() > 0.6
        assert _psnr(warped[v], _premul(s.posed)[v]) >= 30
        moved = np.hypot(*np.moveaxis(s.flow, -1, 0)) > 0.5
        assert moved.sum() > 200  # the pose really moved something


def test_disocclusion_is_marked_when_the_head_turns():
    pr = PairRenderer(sample_character(3), (256, 256))
    rest = pr.sample({})
    turned = pr.sample({"head_yaw": 25})
    x, y, bw, bh = turned.face_box
    head = (slice(max(0, y - bh // 2), y + bh), slice(max(0, x - bw // 2), x + bw + bw // 2))
    hidden = ~turned.visible[head] & (turned.posed[head][..., 3] > 0.99)
    before = ~rest.visible[head] & (rest.posed[head][..., 3] > 0.99)  # at rest: only mixed (edge, shadow) pixels
    assert hidden.sum() > before.sum() + 400
    # turning toward the viewer's right reveals the left side of the head (image left): that is where they are
    revealed = hidden & ~before
    mid = revealed.shape[1] // 2
    assert revealed[:, :mid].sum() > 2 * revealed[:, mid:].sum()
    # the revealed pixels are where layers changed order: their top layer is not the top layer at the rest position
    closed = pr.sample({"blink_left": 1, "blink_right": 1})
    eyes = closed.rest_masks[0] > 0.5
    assert (~closed.visible[eyes]).mean() > 0.3  # the lid now covers what was eye


def test_masks_cover_their_parts():
    pr = PairRenderer(sample_character(7), (512, 512))
    s = pr.sample({"mouth_open": 1})
    verts = s.vertices_posed
    for part, names in ((0, ("iris_left", "iris_right")), (2, ("mouth_up_mid", "mouth_lo_mid"))):
        m = s.masks[part] > 0.5
        assert m.sum() > 30
        for name in names:
            x, y = verts[fm.LANDMARK_NAMES.index(name), :2]
            near = m[int(round(y)) - 3:int(round(y)) + 4, int(round(x)) - 3:int(round(x)) + 4]
            assert near.any(), name
    brows = s.masks[1] > 0.5
    ys, xs = np.nonzero(brows)
    assert brows.sum() > 60
    brow_y = verts[[fm.LANDMARK_NAMES.index(f"brow_{side}_2") for side in ("left", "right")], 1]
    assert abs(np.median(ys) - brow_y.mean()) < 8
    blink = pr.sample({"blink_left": 1, "blink_right": 1})
    assert blink.masks[0].sum() < 0.5 * s.masks[0].sum()  # closed eyes show much less eye


def test_face_mesh_is_exactly_linear_and_projects_onto_the_render():
    mean, a_id, a_exp = fm.linear_model()
    rng = np.random.default_rng(0)
    for _ in range(5):
        alpha = rng.uniform(-1, 1, fm.N_ID)
        e = {n: 0.0 for n in character_schema().names}
        e.update({n: float(rng.uniform(0, 1)) for n in EXPRESSION_CHANNELS})
        vec = np.array([e[n] for n in EXPRESSION_CHANNELS])
        np.testing.assert_allclose(fm.landmarks(alpha, e), mean + a_id @ alpha + a_exp @ vec, atol=1e-12)
    assert mean.shape == (fm.N_LANDMARKS, 3) and a_exp.shape[-1] == len(EXPRESSION_CHANNELS)
    # the posed mesh lands on the rendered features: the iris centres are on iris pixels, yaw moves them
    char = sample_character(11)
    pr = PairRenderer(char, (256, 256))
    r = pr.renderer.render({"head_yaw": 20}, gt=True)
    s = pr.sample({"head_yaw": 20})
    for side in ("left", "right"):
        x, y = s.vertices_posed[fm.LANDMARK_NAMES.index(f"iris_{side}"), :2]
        assert r.layers[r.label[int(round(y)), int(round(x))]] == f"iris_{side}"
    assert s.vertices_posed[:, 0].mean() > s.vertices_rest[:, 0].mean() + 3


def test_parameters_in_every_schema_round_trip():
    rng = np.random.default_rng(1)
    char = sample_character(0)
    pr = PairRenderer(char, (64, 64))
    for _ in range(5):
        values = sample_pose(rng)
        s = pr.sample(values)
        vec = s.values
        get_schema("character").validate(vec)
        for name in ("pose5", "tha45", "au17"):
            get_schema(name).validate(s.params[name], policy="clamp")
        p5 = convert(s.params["pose5"], "pose5", "character")
        names = character_schema().names
        for ch in ("blink_left", "blink_right", "mouth_open"):
            assert p5[names.index(ch)] == pytest.approx(vec[names.index(ch)], abs=1e-6)
        s3 = get_schema(ENGINE_3DMM)
        p3 = s.params["3dmm"]
        np.testing.assert_allclose(p3[[s3.names.index(f"id_{i:02d}") for i in range(fm.N_ID)]], char.alpha,
                                   atol=1e-6)
        back = engine_3dmm_converter().from_schema(p3)
        for ch in EXPRESSION_CHANNELS + ("head_yaw", "head_pitch", "head_roll"):
            assert back[names.index(ch)] == pytest.approx(vec[names.index(ch)], abs=1e-5)
        kp = get_schema("kp")
        assert s.params["kp"][kp.names.index("yaw")] == pytest.approx(vec[names.index("head_yaw")], abs=1e-5)


def test_pose_sampler_stays_in_range_and_is_neutral_heavy():
    rng = np.random.default_rng(3)
    poses = [sample_pose(rng) for _ in range(400)]
    vecs = np.array([[p[n] for n in character_schema().names] for p in poses])
    character_schema().validate(vecs)
    expr = vecs[:, [character_schema().names.index(n) for n in EXPRESSION_CHANNELS]]
    assert 0.1 < (np.abs(expr).sum(axis=1) == 0).mean() < 0.5
    assert (expr != 0).mean() < 0.2


def test_resolution_independent_4k():
    # a 4096² render area-averaged to 256² matches the 256² render
    for seed in (1, 6):
        char = sample_character(seed)
        values = {"head_yaw": 15, "mouth_open": 0.7, "blink_left": 0.5}
        hi = Renderer(char, (4096, 4096)).render(values).image
        lo = Renderer(char, (256, 256)).render(values).image
        down = cv2.resize(_premul(hi), (256, 256), interpolation=cv2.INTER_AREA)
        assert _psnr(down, _premul(lo)) >= 35


def test_non_square_sizes_and_placement():
    r = Renderer(sample_character(1), (144, 256))
    img = r.render().image
    assert img.shape == (144, 256, 4)
    ys, xs = np.nonzero(img[..., 3] > 0.5)
    assert abs(xs.mean() - 128) < 20  # centred horizontally


def test_dataset_split_resume_and_reader(tmp_path):
    cfg = SynthConfig(characters=5, poses_per_character=3, size=48, seed=7, test_fraction=0.2, characters_per_shard=2)
    splits = character_seeds(cfg)
    assert len(splits["test"]) == 1 and not set(splits["test"]) & set(splits["train"])
    calls = []
    manifest = write_dataset(tmp_path, cfg, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (5, 5)
    assert sum(s["samples"] for s in manifest["shards"].values()) == 15
    train, test = ShardDataset(tmp_path, "train"), ShardDataset(tmp_path, "test")
    assert len(train) == 12 and len(test) == 3
    item = train[11]
    assert item["posed"].shape == (48, 48, 4) and item["posed"].dtype == np.uint8
    assert item["flow"].dtype == np.float32 and item["visible"].dtype == bool
    assert item["param_tha45"].shape == (45,) and item["vertices_posed"].shape == (fm.N_LANDMARKS, 3)
    assert {int(train[i]["char_seed"]) for i in range(len(train))} == set(splits["train"])
    # resume: nothing left to do, files untouched
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npz")}
    calls.clear()
    write_dataset(tmp_path, cfg, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert not calls and stamp == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npz")}
    # an interrupted run (one shard missing from the manifest) renders only that shard
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["shards"].pop("train/shard_00001.npz")
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    write_dataset(tmp_path, cfg, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 2)]
    with pytest.raises(Exception, match="another configuration"):
        write_dataset(tmp_path, SynthConfig(characters=6, poses_per_character=3, size=48, seed=7), workers=1)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--characters", "3", "--poses-per-character", "2", "--size", "32",
                 "--workers", "2", "--quiet"]) == 0
    assert "4 train and 2 test pairs" in capsys.readouterr().out
    assert main(["synth", "--sheet", str(tmp_path / "s.png"), "--characters", "2", "--size", "64"]) == 0
    sheet = cv2.imread(str(tmp_path / "s.png"))
    assert sheet.shape == (2 * 32, 9 * 32, 3)
    assert main(["synth", "--out", str(tmp_path / "bad"), "--characters", "0"]) == 2
    assert "at least one character" in capsys.readouterr().err


def test_on_the_fly_dataset_is_deterministic():
    ds = OnTheFlyDataset([11, 12], poses_per_character=3, size=48, seed=2)
    assert len(ds) == 6
    a, b = ds[4], OnTheFlyDataset([11, 12], poses_per_character=3, size=48, seed=2)[4]
    assert int(a["char_seed"]) == 12 and a["posed"].shape == (48, 48, 4)
    assert np.array_equal(a["posed"], b["posed"]) and np.array_equal(a["values"], b["values"])
    with pytest.raises(IndexError):
        ds[6]
