import numpy as np
import pytest
from PIL import Image

from keyface.core import analytic as an
from keyface.core import reswarp as rw
from keyface.core.cli import main
from keyface.core.metrics import psnr
from keyface.core.reswarp import cpu, geometry

ZERO = np.zeros((128, 128, 2), np.float32)


def _noise(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    scale = {np.uint8: 255, np.uint16: 65535}.get(dtype, 1)
    return (rng.random(shape) * scale).astype(dtype)


@pytest.mark.parametrize("mode", rw.MODES)
@pytest.mark.parametrize(("shape", "dtype"), [
    ((512, 512, 3), np.uint8), ((1000, 1500, 4), np.uint8), ((301, 203, 4), np.uint16), ((257, 640, 3), np.float32),
])
def test_identity(mode, shape, dtype):
    src = _noise(shape, dtype)
    lifter = rw.Lifter(src, mode=mode)
    for low in (lifter.low_input(), lifter._quantised_input(np.uint8 if dtype == np.float32 else dtype)):
        out = lifter.lift(low, ZERO)
        assert out.dtype == src.dtype and out.shape == src.shape
        err = np.abs(out.astype(np.float64) - src.astype(np.float64)).max() / geometry.scale_of(dtype)
        assert err <= 1 / 255


def test_identity_with_box_outside_bit_identical():
    src = _noise((700, 900, 4), np.uint8, 1)
    box = rw.Box(123, 77, 401, 333)
    lifter = rw.Lifter(src, box, grid=(96, 128))
    low = lifter.low_input() * 0.98  # every cell changed: the whole box is recomputed
    out = lifter.lift(low, np.full((96, 128, 2), 0.3, np.float32))
    outside = np.ones(src.shape[:2], bool)
    outside[box.slices] = False
    assert np.array_equal(out[outside], src[outside])
    assert (out[box.slices] != src[box.slices]).any()
    same = lifter.lift(lifter.low_input(), np.zeros((96, 128, 2), np.float32))
    assert np.abs(same.astype(int) - src.astype(int)).max() <= 1


def test_level_sizes_any_size():
    assert rw.level_sizes((2160, 3840), (128, 128), "multiscale") == [
        (2160, 3840), (1080, 1920), (540, 960), (270, 480), (135, 240), (128, 128)]
    assert rw.level_sizes((4096, 4096), (128, 128), "multiscale")[-2:] == [(256, 256), (128, 128)]
    assert rw.level_sizes((1500, 1000), (128, 128), "multiscale") == [(1500, 1000), (750, 500), (375, 250),
                                                                       (128, 128)]
    assert rw.level_sizes((4320, 7680), (128, 128), "vanilla") == [(4320, 7680), (128, 128)]


def test_no_half_pixel_shift_on_odd_sizes():
    # A smooth ramp survives down- and up-sampling through odd sizes without moving: its centre stays put.
    h, w = 375, 251
    x = np.arange(w, dtype=np.float32)
    img = np.repeat(np.repeat(((x + 0.5) / w)[None, :, None], h, 0), 3, 2)
    down = cpu.area_down(img, (128, 128))
    np.testing.assert_allclose(down[0], ((np.arange(128) + 0.5) / 128)[:, None].repeat(3, 1), atol=1e-4)
    up = cpu.upsample(down, (h, w))
    inner = slice(2, w - 2)  # bilinear is exact on a ramp away from the clamped border
    np.testing.assert_allclose(up[10, inner, 0], img[10, inner, 0], atol=1e-4)


@pytest.mark.parametrize("kind", an.WARPS)
@pytest.mark.parametrize("mode", rw.MODES)
def test_beats_bilinear_upsampling_2k(kind, mode):
    src, target, flow = an.case(kind, 1080, 1920)
    low = cpu.area_down(target, (128, 128))
    base = psnr(cpu.upsample(low, target.shape[:2]), target)
    out = rw.Lifter(src, mode=mode).lift(low, flow)
    assert psnr(out, target) >= base + 6


@pytest.mark.parametrize("kind", ["rotation", "squash"])
def test_beats_bilinear_upsampling_4k(kind):
    src, target, flow = an.case(kind, 2160, 3840)
    low = cpu.area_down(target, (128, 128))
    base = psnr(cpu.upsample(low, target.shape[:2]), target)
    for mode in rw.MODES:
        assert psnr(rw.Lifter(src, mode=mode).lift(low, flow), target) >= base + 6


def test_backends_agree():
    src = (an.case("bulge", 300, 420)[0] * 255).astype(np.uint8)
    src = np.concatenate([src, np.full(src.shape[:2] + (1,), 200, np.uint8)], axis=2)
    src[:40, :, 3] = 0
    _, _, flow = an.case("bulge", 300, 420)
    for mode in rw.MODES:
        for interp in rw.INTERPS:
            lifter = rw.Lifter(src, rw.Box(10, 20, 400, 260), mode=mode, interp=interp)
            low = (lifter.low_input() * 255).round().astype(np.uint8)
            cpu = lifter.lift(low, flow)
            torch_out = lifter.lift_batch([low, low], [flow, flow])
            # compared as composited (premultiplied): a nearly transparent pixel's colour is ill-conditioned
            for frame in torch_out:
                assert np.abs(rw.to_work(frame) - rw.to_work(cpu)).max() <= 1.01 / 255


@pytest.mark.parametrize("shift", [-300.0, 300.0])
def test_field_reading_past_the_box_edge(shift):
    # A field that reads whole bands from beyond the box's left or right edge (a strong slide): the source's residual
    # is read at the box's edge pixels there (border replicate), by the CPU backend as by the torch one (the CPU
    # path's read window was once empty there, and OpenCV refused it).
    src = _noise((180, 240, 4), np.uint8, 5)
    lifter = rw.Lifter(src, rw.Box(20, 10, 200, 160), grid=(64, 80))
    low = lifter._quantised_input(np.uint8).copy()
    flow = np.zeros((64, 80, 2), np.float32)
    flow[..., 0] = shift
    out = lifter.lift(low, flow)
    torch_out = lifter.lift_batch([low], [flow])[0]
    assert np.abs(rw.to_work(out) - rw.to_work(torch_out)).max() <= 1.01 / 255
    assert np.abs(out.astype(int) - lifter.lift(low, np.zeros_like(flow)).astype(int)).max() > 50  # it moved


def test_rgba_edges_have_no_fringe():
    # A white disc on a transparent background whose hidden colour is black: a straight-alpha lift would darken the
    # anti-aliased rim; the premultiplied lift keeps it white.
    h = w = 512
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - 256, yy - 256)
    src = np.zeros((h, w, 4), np.uint8)
    src[..., :3] = np.where(r[..., None] < 151, 255, 0)  # white wherever it is at all visible
    src[..., 3] = np.clip((150.5 - r) * 255, 0, 255).astype(np.uint8)
    flow = np.zeros((128, 128, 2), np.float32)
    flow[..., 0] = 0.37
    lifter = rw.Lifter(src)
    mx, my = cpu.warp_maps(flow, (128, 128), slice(0, 128), slice(0, 128))
    low_work = cpu.sample(lifter.levels[-1], mx, my, "linear")
    low = rw.from_work(low_work, np.uint8)
    out = lifter.lift(low, flow)
    visible = out[..., 3] > 8
    assert visible.sum() > 60000
    assert out[visible][:, :3].min() >= 245  # no dark fringe at the rim
    rgb_only = lifter.lift(low[..., :3], flow)  # no generator alpha: the warped source alpha is used
    assert np.abs(rgb_only[..., 3].astype(int) - out[..., 3].astype(int)).max() <= 12


def test_feather_has_no_seam():
    src, target, _ = an.case("bulge", 600, 800)
    src8 = (src * 255).round().astype(np.uint8)
    box = rw.Box(200, 150, 384, 256)
    lifter = rw.Lifter(src8, box, grid=(64, 96), feather=24)
    low = (np.clip(lifter.low_input() + 0.08, 0, 1) * 255).round().astype(np.uint8)  # brighter: a step at the box
    out = lifter.lift(low, np.zeros((64, 96, 2), np.float32)).astype(np.float64)
    diff = out - src8
    # the change ramps in over the feather: outside it is zero, across it no step exceeds those inside the box
    row = diff[box.y + box.h // 2, box.x - 5:box.x + 80].mean(axis=1)
    assert not row[:5].any()
    feather_steps = np.abs(np.diff(row[4:5 + 24]))
    inner_steps = np.abs(np.diff(row[5 + 24:]))
    assert feather_steps.max() <= max(inner_steps.max(), 0.08 * 255 / 24 + 1)
    assert np.median(row[5 + 24:]) == pytest.approx(0.08 * 255, abs=2)


def test_bad_inputs():
    src = _noise((256, 256, 3), np.uint8)
    lifter = rw.Lifter(src)
    with pytest.raises(rw.ResWarpError, match="NaN"):
        lifter.lift(lifter.low_input(), np.full((128, 128, 2), np.nan, np.float32))
    with pytest.raises(rw.ResWarpError, match="flow must have shape"):
        lifter.lift(lifter.low_input(), np.zeros((64, 64, 2), np.float32))
    with pytest.raises(rw.ResWarpError, match="grid is 128×128"):
        lifter.lift(np.zeros((100, 128, 3), np.uint8), ZERO)
    with pytest.raises(rw.ResWarpError, match="does not fit"):
        rw.Lifter(src, rw.Box(200, 0, 100, 10))
    with pytest.raises(rw.ResWarpError, match="H×W×3 or H×W×4"):
        rw.Lifter(src[..., 0])
    with pytest.raises(rw.ResWarpError, match="unsupported image type"):
        rw.Lifter(src.astype(np.int32))


def test_flow_adapter_recovers_translation():
    src, target, flow = an.case("translation", 512, 512)
    lifter = rw.Lifter(src)
    out_low = cpu.area_down(target, (128, 128))
    est = rw.estimate_flow(lifter.low_input(), out_low)
    inner = (slice(16, -16), slice(16, -16))
    assert np.abs(est[inner] - flow[inner]).mean() < 0.1
    lifted = lifter.lift(out_low, est)
    crop = (slice(64, -64), slice(64, -64))
    base = psnr(cpu.upsample(out_low, (512, 512))[crop], target[crop])
    assert psnr(lifted[crop], target[crop]) > base


def _save(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


def test_cli_reswarp(tmp_path, capsys):
    src = (an.case("squash", 300, 400)[0] * 255).round().astype(np.uint8)
    lifter = rw.Lifter(src, rw.Box(100, 50, 200, 200))
    low = (lifter.low_input() * 255).round().astype(np.uint8)
    np.save(tmp_path / "flow.npy", np.zeros((128, 128, 2), np.float32))
    args = ["reswarp", "--source", _save(tmp_path / "hd.png", src), "--low", _save(tmp_path / "low.png", low),
            "--flow", str(tmp_path / "flow.npy"), "--box", "100,50,200,200", "--out", str(tmp_path / "out.png")]
    assert main(args) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.abs(out.astype(int) - src.astype(int)).max() <= 1
    np.save(tmp_path / "bad.npy", np.full((128, 128, 2), np.nan, np.float32))
    bad = args[:6] + [str(tmp_path / "bad.npy")] + args[7:-1] + [str(tmp_path / "out2.png")]
    assert main(bad) == 2 and "NaN" in capsys.readouterr().err
    assert not (tmp_path / "out2.png").exists()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = args[:2] + [str(tmp_path / "broken.png")] + args[3:-1] + [str(tmp_path / "out3.png")]
    assert main(broken) == 2 and "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "out3.png").exists()


@pytest.mark.parametrize("mode", rw.MODES)
def test_sparse_lift_equals_dense(mode):
    # Local changes in three separate places (two eyes and a mouth, one of them with no motion, only a new colour):
    # recomputing only around them gives what recomputing the whole box gives, and leaves the rest as the source.
    src = _noise((700, 1000, 4), np.uint8, 3)
    lifter = rw.Lifter(src, rw.Box(50, 40, 900, 620), mode=mode)
    v, u = np.mgrid[0:128, 0:128].astype(np.float32)
    flow = np.zeros((128, 128, 2), np.float32)
    for cx, cy in ((40, 50), (90, 50)):
        g = np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / 18)
        flow[..., 1] += np.where(g > 1e-3, 1.5 * g, 0)
    low = lifter._quantised_input(np.uint8).copy()
    low[95:100, 60:70] = 20
    assert len(rw.active_rects(lifter.active_cells(lifter._low_work(low, flow), flow))) == 3
    sparse, dense = lifter.lift(low, flow), lifter.lift(low, flow, sparse=False)
    assert np.abs(sparse.astype(int) - dense.astype(int)).max() <= 1
    assert (sparse != src).any(axis=2).mean() < 0.25


def test_box_at_grid_size():
    src = _noise((200, 300, 3), np.uint8, 4)
    lifter = rw.Lifter(src, rw.Box(10, 10, 128, 128))
    low = np.full((128, 128, 3), 77, np.uint8)
    out = lifter.lift(low, ZERO, sparse=False)
    inner = out[10 + lifter.feather:138 - lifter.feather, 10 + lifter.feather:138 - lifter.feather]
    assert (inner == 77).all()
    assert np.abs(lifter.lift(lifter._quantised_input(np.uint8), ZERO).astype(int) - src).max() <= 1


def test_strips_do_not_change_the_result(monkeypatch):
    src = _noise((300, 400, 4), np.uint16, 5)
    _, _, flow = an.case("rotation", 300, 400)
    whole = rw.Lifter(src, mode="multiscale")
    low = whole.low_input() * 0.9
    ref = whole.lift(low, flow)
    monkeypatch.setattr(geometry, "STRIP_PIXELS", 400 * 7)  # 7-row strips, in the decomposition and in the lift
    assert np.array_equal(rw.Lifter(src, mode="multiscale").lift(low, flow), ref)


def test_residual_weight():
    # A residual weight of 0 removes the source's detail where a generator painted new content; 1 (or none) is the
    # plain lift; the CPU and torch backends agree; a bad weight is refused.
    import cv2

    src = _noise((600, 800, 4), np.uint8, 7)
    box = rw.Box(100, 50, 512, 512)
    lifter = rw.Lifter(src, box)
    low = lifter._quantised_input(np.uint8).copy()
    assert np.array_equal(lifter.lift(low, ZERO, weight=np.ones((128, 128))), lifter.lift(low, ZERO))
    weight = np.ones((128, 128), np.float32)
    weight[:, :48] = 0
    out = lifter.lift(low, ZERO, weight=weight)
    crop, ref = out[box.slices], src[box.slices]
    right = slice(256, 512)  # far from the weight's edge (cells 48+ and the up-sampling margin)
    assert np.array_equal(crop[:, right], ref[:, right])
    inner = (slice(40, 472), slice(40, 160))  # inside the feather band (32 px) and left of the weight's edge
    lap = lambda a: cv2.Laplacian(a[..., :3].astype(np.float32), cv2.CV_32F).var()  # noqa: E731
    assert lap(crop[inner]) < 0.02 * lap(ref[inner])   # detail gone where the weight is 0
    torch_out = lifter.lift_batch([low], [ZERO], [weight])[0]
    assert np.abs(torch_out.astype(int) - out.astype(int)).max() <= 1
    with pytest.raises(rw.ResWarpError, match="residual weight"):
        lifter.lift(low, ZERO, weight=np.ones((64, 64)))
    with pytest.raises(rw.ResWarpError, match="NaN"):
        lifter.lift(low, ZERO, weight=np.full((128, 128), np.nan))


def test_bench_remap_floor_warps_only_the_box():
    from keyface.core.bench import _remap_floor, make_flow, make_source, scene_box

    source = make_source(360, 640)
    box = scene_box("head", 360, 640)
    assert np.array_equal(_remap_floor(source, box, np.zeros((128, 128, 2), np.float32))(), source)
    turned = _remap_floor(source, box, make_flow("global"))()
    outside = np.ones(source.shape[:2], bool)
    outside[box.slices] = False
    assert np.array_equal(turned[outside], source[outside])
    assert (turned[box.slices] != source[box.slices]).any(axis=2).mean() > 0.5


@pytest.mark.parametrize("mode", rw.MODES)
def test_feather_follows_a_motion_that_fades_toward_the_box_edge(mode):
    # A generator's motion that fades out toward the box edge (the typical eye, mouth or head edit): the feather band
    # blends toward the source warped by the same field, so the band matches the exact warp as well as the same lift
    # without a feather does (blending toward the unwarped source drew double edges there).
    H, W, box = 700, 900, rw.Box(200, 100, 512, 512)
    x, y = an.pixel_grid(H, W)
    inside = np.minimum.reduce([x - box.x, box.x + box.w - x, y - box.y, box.y + box.h - y]) + 0.5
    fade = np.clip((inside - 8) / 88, 0, 1)  # 0 up to 8 px inside the edge, 1 from 96 px on
    dx = 9.0 * fade ** 2 * (3 - 2 * fade)
    source = an.texture_at(x, y, W)
    target = an.texture_at(x + dx, y, W)
    sx = box.w / 128
    u, v = an.pixel_grid(128, 128)
    gx, gy = box.x + (u + 0.5) * sx - 0.5, box.y + (v + 0.5) * sx - 0.5  # grid pixel centres
    g_inside = np.minimum.reduce([gx - box.x, box.x + box.w - gx, gy - box.y, box.y + box.h - gy]) + 0.5
    g_fade = np.clip((g_inside - 8) / 88, 0, 1)
    flow = np.zeros((128, 128, 2), np.float32)
    flow[..., 0] = 9.0 * g_fade ** 2 * (3 - 2 * g_fade) / sx
    low = cpu.area_down(target[box.slices], (128, 128))  # the ideal generator's result
    band = np.zeros((H, W), bool)
    band[box.slices] = True
    feather = 32
    band[box.y + feather:box.y + box.h - feather, box.x + feather:box.x + box.w - feather] = False
    scores = {}
    for f in (feather, 0):
        out = rw.Lifter(source, box, grid=(128, 128), mode=mode, feather=f).lift(low, flow)
        scores[f] = psnr(out[band], target[band])
    assert scores[feather] >= scores[0] - 0.5, scores
    src_score = psnr(source[band], target[band])
    assert scores[feather] > src_score + 3, (scores, src_score)  # it is the moved picture, not the source
