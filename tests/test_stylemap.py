"""Style mapping (seed 003) networks: soft-argmax, rotations and angle bins, the first-order warp's identity, shapes,
and the loss falling on a tiny overfit batch."""

from __future__ import annotations

import torch

from keyface.core.methods.stylemap import networks as N


def test_soft_argmax_finds_the_peak_voxel():
    heat = torch.full((1, 2, 4, 8, 8), -50.0)
    heat[0, 0, 1, 2, 5] = 50.0
    heat[0, 1, 3, 7, 0] = 50.0
    kp = N.soft_argmax(heat)[0]
    grid = N.grid3d(4, 8, 8)
    assert torch.allclose(kp[0], grid[1, 2, 5], atol=1e-4) and torch.allclose(kp[1], grid[3, 7, 0], atol=1e-4)


def test_rotations_and_angle_bins():
    a = torch.tensor([0.0, 30.0, -45.0])
    r = N.rotation(a, a * 0.7, a * 0.5)
    assert torch.allclose(r[0], torch.eye(3), atol=1e-6)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(3), atol=1e-5)
    yaw = N.rotation(torch.tensor([90.0]), torch.zeros(1), torch.zeros(1))[0]
    assert torch.allclose(yaw @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    logits = torch.full((2, N.BINS), -30.0)
    logits[0, 0], logits[1, 40] = 30.0, 30.0
    assert torch.allclose(N.bin_angles(logits), torch.tensor([-97.5, 22.5]), atol=1e-3)


def _nets(size=64):
    torch.manual_seed(0)
    cfg = N.StyleMapConfig(size=size, base=8, hourglass=8, blocks3d=1, blocks2d=1)
    return cfg, N.KeypointExtractor(cfg), N.PoseExpressionNet(cfg), N.StyleMapGenerator(cfg)


def test_same_keypoints_warp_nothing():
    # Eq. (1) with the driving keypoints and rotation equal to the source's: every keypoint's warp is the identity,
    # so the composed motion is the identity whatever the composition maps, and the 2D flow is zero
    cfg, kpx, pen, gen = _nets()
    gen.eval()
    x = torch.rand(2, 4, 64, 64) * 2 - 1
    with torch.no_grad():
        kp, r = N.keypoints(kpx(x), pen(x))
        out = gen(x, kp, kp, r, r)
    d, h, w = cfg.depth, 16, 16
    assert torch.allclose(out["motion"], N.grid3d(d, h, w)[None].expand(2, d, h, w, 3), atol=1e-5)
    assert N.flow_2d(out["motion"], 64).abs().max() < 1e-3
    assert out["out"].shape == (2, 4, 64, 64) and out["occlusion"].shape == (2, 1, 16, 16)
    assert torch.allclose(out["masks"].sum(1), torch.ones(2, d, h, w), atol=1e-5)


def test_loss_falls_on_a_tiny_batch():
    cfg, kpx, pen, gen = _nets()
    src = torch.nn.functional.interpolate(torch.rand(2, 4, 8, 8) * 2 - 1, size=(64, 64), mode="bilinear")
    tgt = torch.roll(src, 3, dims=3)  # smooth images, the target moved 3 px
    params = [*kpx.parameters(), *pen.parameters(), *gen.parameters()]
    opt = torch.optim.Adam(params, 2e-3)
    losses = []
    for _ in range(30):
        c = kpx(src)
        kp_s, r_s = N.keypoints(c, pen(src))
        kp_d, r_d = N.keypoints(c, pen(tgt))
        loss = (gen(src, kp_s, kp_d, r_s, r_d)["out"] - tgt).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses[-3:]) < 0.8 * losses[0], losses
