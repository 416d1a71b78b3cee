"""F³A-GAN (seed 002): geometry against the engine, facial flow and its inverse, the regressor's augmentation, loss
falling on tiny overfit batches, the trainer's runs, the runtime through the render path, fit files and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from keyface.core import models
from keyface.core.cli import main
from keyface.core.methods.f3a import SCHEMA
from keyface.core.methods.f3a import geometry as geo
from keyface.core.methods.f3a import trainer as T
from keyface.core.methods.f3a.networks import F3AConfig, F3AGenerator, Regressor, RegressorConfig
from keyface.core.rig import EXPRESSION_CHANNELS, character_schema, convert, get_schema
from keyface.core.synth import face as fm
from keyface.core.training import load_split

SIZE = 64
COLS = ("rest", "posed", "param_3dmm", "param_au17", "values", "vertices_posed")


@pytest.fixture(scope="module")
def data(head_data):
    return head_data  # 64² head crops (conftest)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """A regressor and a generator from short CLI runs (random-ish weights, but the real files and loaders)."""
    base = tmp_path_factory.mktemp("f3a_runs")
    common = ["--data", str(data), "--steps", "3", "--eval-every", "3", "--eval-characters", "1", "--size",
              str(SIZE), "--base", "4", "--device", "cpu", "--quiet"]
    assert main(["train", "f3a", "--stage", "regressor", "--out", str(base / "reg"), "--batch", "4", *common]) == 0
    assert main(["train", "f3a", "--stage", "generator", "--out", str(base / "gen"), "--batch", "2", *common]) == 0
    return base / "gen" / "generator.safetensors", base / "reg" / "generator.safetensors"


def test_projection_is_the_engines_pose(data):
    d = load_split(data, "train", COLS)
    truth = T.true_params(d["param_3dmm"], d["values"])
    assert np.abs(geo.project_np(truth, SIZE) - d["vertices_posed"]).max() < 1e-3
    # the source: the character's identity at rest, as the engine projects it
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.render import FRAMINGS, REST
    from keyface.core.synth.sample import PairRenderer

    seed = int(load_split(data, "train", ("char_seed",))["char_seed"][0])
    pr = PairRenderer(sample_character(seed), (SIZE, SIZE), FRAMINGS["head"])
    rest = pr.vertices(dict(REST), fm.Pose(dict(REST)))
    assert np.abs(geo.project_np(T.source_params(d["param_3dmm"][:1]), SIZE)[0] - rest).max() < 1e-3


def test_rasterize_zbuffer_keeps_the_nearer_point():
    verts = np.array([[2, 2, 1], [14, 2, 1], [2, 14, 1], [4, 4, 5], [15, 4, 5], [4, 15, 5]], np.float32)
    attrs = np.array([[1], [1], [1], [2], [2], [2]], np.float32)
    for order in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]):
        m, cov = geo.rasterize(verts, attrs, 16, tris=np.array(order))
        assert m[6, 6, 0] == 2 and m[3, 3, 0] == 1  # overlap: the nearer (depth 5) wins; elsewhere the far one
        assert not cov[0, 0] and m[0, 0, 0] == 0


def _keys(**named) -> np.ndarray:
    """Character-rig values → F³A keys (offsets from the fit)."""
    rig = character_schema()
    v = rig.defaults.astype(np.float64).copy()
    for k, x in named.items():
        v[rig.index(k)] = x
    return convert(v, "character", SCHEMA).astype(np.float32)


def test_facial_flow_and_its_inverse():
    size = 128
    src = geo.neutral_params()[0]
    src[geo.SL_ID] = np.linspace(-0.8, 0.8, geo.K)
    assert not geo.facial_flow(geo.project_np(src, size)[0], geo.project_np(src, size)[0], size).any()
    flow, cov = geo.backward_flow(src, src, size)
    assert not flow.any() and cov.any()

    tgt = geo.target_params(src, _keys(mouth_open=1.0, blink_left=1.0, head_yaw=12.0))[0]
    ps, pt = geo.project_np(src, size)[0], geo.project_np(tgt, size)[0]
    ff = geo.facial_flow(ps, pt, size)
    delta = (pt - ps) / (size / 2)
    assert ff.any()
    _, on_face = geo.rasterize(ps, np.zeros((len(ps), 1)), size)
    assert not ff[~on_face].any()  # splatted on the source mesh only
    for c in range(3):  # barycentric interpolation never leaves the vertices' range
        v = ff[on_face][:, c]
        assert delta[:, c].min() - 1e-6 <= v.min() and v.max() <= delta[:, c].max() + 1e-6
    flow, cov = geo.backward_flow(src, tgt, size)
    # at each target vertex's pixel inside the mesh, pixel + flow lands on the same point of the source mesh
    errs = []
    for i in range(len(pt)):
        x, y = np.rint(pt[i, :2]).astype(int)
        if cov[y, x] and fm.LANDMARK_NAMES[i].startswith(("nose", "brow", "eye_left_outer", "contour_4")):
            want = ps[i, :2] + (np.array([x, y]) - pt[i, :2])  # moving with the local (near-rigid) motion
            errs.append(np.abs(np.array([x, y]) + flow[y, x] - want).max())
    assert errs and max(errs) < 1.0
    assert np.abs(flow[~cov]).max() > 0  # the rigid head motion outside the mesh (head turn) ...
    assert not flow[0, 0].any() and not flow[-1, -1].any()  # ... faded to nothing in the crop's corners


def test_keys_are_offsets_from_the_fit():
    src = geo.neutral_params()[0]
    src[geo.SL_EXP] = 0.3
    src[geo.I_SCALE] = 1.1
    rest = get_schema(SCHEMA).defaults.astype(np.float32)
    assert np.array_equal(geo.target_params(src, rest)[0], src)
    k = _keys(mouth_open=1.0)
    i = geo.K + EXPRESSION_CHANNELS.index("mouth_open")  # α_exp is the rig's expression channels: exact
    assert k[i] == 1.0
    assert geo.target_params(src, k)[0, i] == pytest.approx(1.3)


def test_regressor_augmentation_moves_the_targets_with_the_image(data):
    d = load_split(data, "train", COLS)
    p = T.true_params(d["param_3dmm"], d["values"])
    img, q = T.augment(d["posed"], p, np.random.default_rng(1), SIZE)
    a = q[:, geo.I_SCALE] / p[:, geo.I_SCALE]
    o = np.array(geo.origin(SIZE))
    moved = a[:, None, None] * (geo.project_np(p, SIZE)[..., :2] - o) + o
    shift = geo.project_np(q, SIZE)[..., :2] - moved  # one translation per image, the same for every landmark
    assert np.abs(shift - shift[:, :1]).max() < 1e-3 and np.abs(shift).max() <= 8.01
    # and the image moved the same way: its alpha's centre of mass follows
    def com(im):
        a_ = im[..., 3]
        return np.array([(a_ * np.arange(SIZE)[None]).sum(), (a_ * np.arange(SIZE)[:, None]).sum()]) / a_.sum()

    i = 0
    want = a[i] * (com(d["posed"][i].astype(np.float64)) - o) + o + shift[i, 0]
    assert np.abs(com(img[i].astype(np.float64)) - want).max() < 1.5


def _overfit(model, step, n=40):
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    losses = []
    for _ in range(n):
        loss = step()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_regressor_loss_falls_on_a_tiny_batch(data):
    from keyface.core.pixels import to_net

    d = load_split(data, "train", COLS)
    torch.manual_seed(0)
    net = Regressor(RegressorConfig(size=SIZE, base=8))
    x, p = to_net(d["posed"][:6]), torch.from_numpy(T.true_params(d["param_3dmm"][:6], d["values"][:6]))
    losses = _overfit(net, lambda: T.regressor_losses(net(x), p, SIZE, T.LossWeights(), "warm")["total"])
    assert losses[-1] < 0.5 * losses[0]
    sub = T.regressor_losses(net(x), p, SIZE, T.LossWeights(), "sub")
    assert set(sub) == {"lm", "reg", "total"}
    warm = T.regressor_losses(net(x), p, SIZE, T.LossWeights(), "warm")
    assert set(warm) == {"shp", "lm", "tr", "reg", "exp2", "total"}


@pytest.mark.parametrize("condition,streams", [("flow", 2), ("aus", 2), ("landmarks", 2), ("flow", 1)])
def test_generator_loss_falls_on_a_tiny_batch(data, condition, streams):
    from keyface.core.pixels import to_net

    d = load_split(data, "train", COLS)
    torch.manual_seed(0)
    net = F3AGenerator(F3AConfig(size=SIZE, base=6, levels=3, condition=condition, streams=streams))
    src, tgt = T.source_params(d["param_3dmm"][:4]), T.true_params(d["param_3dmm"][:4], d["values"][:4])
    cond = torch.from_numpy(geo.conditions(condition, src, tgt, d["param_au17"][:4], SIZE))
    assert cond.shape == (4, net.cfg.cond_channels, SIZE, SIZE)
    x, y = to_net(d["rest"][:4]), to_net(d["posed"][:4])
    losses = _overfit(net, lambda: (net(x, cond) - y).abs().mean(), n=30)
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("condition", ["flow", "aus"])
def test_the_condition_keeps_its_amplitude(condition):
    # a tiny condition changes the output a little, a larger one more (no normalisation erases the amplitude), and a
    # spatially constant one (tiled action units) is not erased
    torch.manual_seed(0)
    net = F3AGenerator(F3AConfig(size=32, base=4, levels=2, condition=condition)).eval()
    x = torch.rand(1, 4, 32, 32) * 2 - 1
    c = torch.randn(1, net.cfg.cond_channels, 32, 32) if condition == "flow" else \
        torch.randn(1, net.cfg.cond_channels, 1, 1).expand(1, -1, 32, 32)
    with torch.no_grad():
        zero = net(x, torch.zeros_like(c))
        small, large = ((net(x, e * c) - zero).abs().max().item() for e in (1e-4, 1.0))
    assert small < 1e-3 < large


def test_fade_in_blends_the_two_up_paths():
    torch.manual_seed(0)
    net = F3AGenerator(F3AConfig(size=32, base=4, levels=2)).eval()
    x, c = torch.rand(1, 4, 32, 32) * 2 - 1, torch.randn(1, 3, 32, 32) * 0.1
    outs = []
    for a in (0.0, 1.0):
        net.alpha.fill_(a)
        outs.append(net(x, c))
    assert not torch.allclose(outs[0], outs[1])


def test_trainer_runs_resume_and_write_weights(runs, data, tmp_path):
    gen, reg = runs
    meta = json.loads(gen.with_suffix(".json").read_text())
    assert meta["method"] == "f3a" and meta["steps"] == 3 and "mae" in meta["validation"]
    assert json.loads(reg.with_suffix(".json").read_text())["method"] == "f3a-regressor"
    run = gen.parent
    assert main(["train", "f3a", "--stage", "generator", "--data", str(data), "--out", str(run), "--steps", "5",
                 "--resume", "--quiet", "--device", "cpu"]) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 5


def test_gan_mode_trains_the_critic(data, tmp_path):
    # Eq. (13) with L_adv: the PatchGAN critic (WGAN-GP) steps once per generator step, and both losses are logged
    cfg = T.TrainConfig(data=str(data), steps=2, eval_every=10, eval_characters=1, eval_poses=1, mode="gan",
                        model=F3AConfig(size=SIZE, base=4, levels=3))
    trainer = T.Trainer(cfg, tmp_path / "run", device="cpu", log=lambda m: None)
    before = [p.detach().clone() for p in trainer.critic.parameters()]
    logs = trainer.train_step()
    assert {"d_adv", "adv", "wp", "perc", "total"} <= set(logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.critic.parameters(), strict=True))


def _registered(runs):
    from keyface.core.methods.f3a.runtime import F3ARuntime

    gen, reg = runs
    return models.registered(models.ModelInfo("test-f3a", "f3a", SCHEMA, "tiny weights (tests)", gen,
                                              lambda info, device="cpu": F3ARuntime(gen, reg, device)))


def _document():
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.render import REST, Renderer

    img = Renderer(sample_character(7), (300, 260)).render(dict(REST)).image
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def test_runtime_in_the_render_path(runs):
    from keyface.core.pipeline import FrameJob
    from keyface.core.pixels import with_alpha

    doc = _document()
    before = doc.copy()
    with _registered(runs):
        job = FrameJob.prepare(doc, "test-f3a", (98, 30, 64, 64))
        assert tuple(job.box) == (66, 4, 128, 128)  # twice the face box, its centre at (0.5, 0.45) of the crop
        low = with_alpha(job.lifter.low_input())
        rest = job.schema.defaults.astype(np.float32)
        g = job.runtime(np.stack([low, low]), np.stack([rest, rest]))
        assert not g.flow.any()  # the rest keys move nothing: zero condition, zero flow
        assert np.array_equal(g.out[0], g.out[1])
        keys = _keys(mouth_open=1.0, head_yaw=10.0)
        frame = job.frames(keys[None])[0]
    assert np.array_equal(doc, before)  # the source is never modified
    x, y, w, h = job.box
    outside = np.ones(doc.shape[:2], bool)
    outside[y:y + h, x:x + w] = False
    assert np.array_equal(frame[outside], doc[outside])
    assert not np.array_equal(frame[y:y + h, x:x + w], doc[y:y + h, x:x + w])


def test_fit3dmm_and_pose_from_fit(runs, tmp_path):
    from keyface.core.imageio import read_image, write_image

    doc = _document()
    src = tmp_path / "doc.png"
    write_image(src, doc)
    fit, overlay = tmp_path / "fit.json", tmp_path / "fit.png"
    with _registered(runs):
        assert main(["fit3dmm", str(src), "--model", "test-f3a", "--box", "98,30,64,64", "--out", str(fit),
                     "--overlay", str(overlay)]) == 0
        rec = json.loads(fit.read_text())
        assert rec["schema"] == SCHEMA and len(rec["landmarks"]) == fm.N_LANDMARKS
        assert set(rec["params"]) == set(get_schema(SCHEMA).names)
        assert read_image(overlay).shape[:2] == doc.shape[:2]
        # reenacting a face with its own fit changes nothing: the keys are all at rest
        out = tmp_path / "same.png"
        assert main(["pose", str(src), "--model", "test-f3a", "--box", "98,30,64,64", "--from-fit", str(fit),
                     "--out", str(out)]) == 0
        assert np.array_equal(read_image(out), doc)
        # a driver's fit with the mouth open and the head turned gives other keys, so another frame
        rec["params"]["exp_14"] += 1.0
        rec["params"]["yaw"] += 10.0
        driver = tmp_path / "driver.json"
        driver.write_text(json.dumps(rec))
        out2 = tmp_path / "driven.png"
        assert main(["pose", str(src), "--model", "test-f3a", "--box", "98,30,64,64", "--from-fit", str(driver),
                     "--out", str(out2)]) == 0
        assert not np.array_equal(read_image(out2), doc)
        # wrong schema, garbage and NaN are refused with a clear error and nothing written
        for bad in ({"schema": "3dmm", "params": rec["params"]}, "not json",
                    {**rec, "params": {**rec["params"], "yaw": float("nan")}}):
            f = tmp_path / "bad.json"
            f.write_text(bad if isinstance(bad, str) else json.dumps(bad))
            assert main(["pose", str(src), "--model", "test-f3a", "--from-fit", str(f), "--out",
                         str(tmp_path / "never.png")]) == 2
            assert not (tmp_path / "never.png").exists()


def test_eval_table(runs, data, capsys):
    gen, reg = runs
    with _registered(runs):
        assert main(["eval", "f3a", str(gen), "--data", str(data), "--regressor", str(reg), "--compare",
                     "test-f3a", "--cross", "test-f3a", "--cross-pairs", "2"]) == 0
    text = capsys.readouterr().out
    assert "identity (output = input)" in text and "flow, 2-stream (exact meshes)" in text
    assert "test-f3a (render path)" in text and "landmark error" in text
    assert "cross-identity (--from-fit)" in text


def _scene(path, source, model, extra=None):
    doc = {"keyface_scene": 1, "source": str(source), "model": model, "face_box": [98, 30, 64, 64],
           "frame_range": [0, 1], "tracks": {"exp_14": {"keys": [{"frame": 0, "value": 0.0},
                                                                  {"frame": 1, "value": 1.0}]}}, **(extra or {})}
    path.write_text(json.dumps(doc))
    return path


def test_a_scene_may_store_the_fit(runs, tmp_path):
    from keyface.core.imageio import read_image, write_image
    from keyface.core.scene import SceneError, load_scene

    src = tmp_path / "doc.png"
    write_image(src, _document())
    with _registered(runs):
        assert main(["fit3dmm", str(src), "--model", "test-f3a", "--box", "98,30,64,64", "--out",
                     str(tmp_path / "fit.json")]) == 0
        fit = json.loads((tmp_path / "fit.json").read_text())["params"]
        outs = {}
        for name, extra in (("plain", None), ("own", {"source_fit": fit}),
                            ("other", {"source_fit": {**fit, "scale": fit["scale"] * 1.3}})):
            scene = _scene(tmp_path / f"{name}.json", src, "test-f3a", extra)
            assert (load_scene(scene).source_fit is None) == (extra is None)
            assert main(["render", str(scene), "--out", str(tmp_path / name), "--quiet"]) == 0
            outs[name] = read_image(tmp_path / name / "frame_00001.png")
        assert np.array_equal(outs["plain"], outs["own"])  # the stored fit is the regressor's: the same frames
        assert not np.array_equal(outs["plain"], outs["other"])  # another stored fit is used instead
        # a fit that is not the model's schema, or not numbers, is refused when the scene is read
        for bad in ({"source_fit": {"yaw": 1.0}}, {"source_fit": [1, 2]}, {"source_fit": {**fit, "yaw": "x"}}):
            with pytest.raises(SceneError):
                load_scene(_scene(tmp_path / "bad.json", src, "test-f3a", bad))


def test_strip_shows_rest_to_target(runs, tmp_path):
    from keyface.core.imageio import read_image, write_image

    src = tmp_path / "doc.png"
    write_image(src, _document())
    with _registered(runs):
        assert main(["strip", str(src), "--models", "test-f3a", "--intent", "open mouth", "--frames", "3", "--size",
                     "40", "--box", "98,30,64,64", "--out", str(tmp_path / "strip.png")]) == 0
        strip = read_image(tmp_path / "strip.png")
        assert strip.shape[:2] == (40, 40 * 4)
        assert np.array_equal(strip[:, :40], strip[:, 40:80])  # frame 0 is the rest pose: the source
        assert not np.array_equal(strip[:, 40:80], strip[:, 120:])  # the last frame is the target
        assert main(["strip", str(src), "--models", "test-f3a", "--intent", "frown", "--out",
                     str(tmp_path / "never.png")]) == 2
        assert not (tmp_path / "never.png").exists()


def test_shipped_model_renders_a_3dmm_scene_at_4k(tmp_path):
    # The shipped f3a-3dmm on the bundled 4K example: a scene keyed in its own schema (3dmm:12x19) renders in place —
    # outside the model's region the document is bit-identical; a tiny key changes almost nothing (the bias-cancelled
    # generator and the near-zero mesh flow, not the rest-frame copy: measured 0.04 % of the region's pixels by more
    # than 2 levels); keys move the face.
    from pathlib import Path

    from keyface.core.imageio import read_image
    from keyface.core.pipeline import render_scene
    from keyface.core.scene import load_scene

    if "f3a-3dmm" not in [m.id for m in models.available_models()]:
        pytest.skip("f3a-3dmm weights are not shipped")
    example = Path(__file__).resolve().parents[1] / "core" / "data" / "example"
    doc = {"keyface_scene": 1, "source": str(example / "character.png"), "model": "f3a-3dmm", "schema": SCHEMA,
           "face_box": [1650, 270, 540, 540], "frame_range": [0, 2],
           "tracks": {"exp_14": {"keys": [{"frame": 0, "value": 0.0}, {"frame": 1, "value": 0.002},
                                          {"frame": 2, "value": 1.0}]},
                      "yaw": {"keys": [{"frame": 0, "value": 0.0}, {"frame": 1, "value": 0.0},
                                       {"frame": 2, "value": 12.0}]}}}
    (tmp_path / "scene.json").write_text(json.dumps(doc))
    scene = load_scene(tmp_path / "scene.json")
    written = render_scene(scene, tmp_path / "out")
    src = read_image(example / "character.png")
    frames = [read_image(p) for p in written]
    assert np.array_equal(frames[0], src)
    x, y, w, h = 1380, 54, 1080, 1080  # the head crop: twice the face box, its centre at (0.5, 0.45)
    outside = np.ones(src.shape[:2], bool)
    outside[y:y + h, x:x + w] = False
    for f in frames[1:]:
        assert np.array_equal(f[outside], src[outside])
    tiny = np.abs(frames[1].astype(int) - src).max(-1)[y:y + h, x:x + w]
    assert tiny.mean() < 0.01 and (tiny > 2).mean() < 1e-3, (tiny.mean(), (tiny > 2).mean())
    moved = np.abs(frames[2].astype(int) - src)[y:y + h, x:x + w].mean()
    assert moved > 1.0, moved
