import json

import numpy as np
import pytest
import torch

from keyface.core.features import TAPS, FeatureConfig, FeatureNet, perceptual_loss, train_features
from keyface.core.methods.cptnet import WEIGHTS as SHIPPED
from keyface.core.methods.cptnet.losses import LossWeights, critic_loss, generator_losses
from keyface.core.methods.cptnet.networks import VARIANTS, CPTNetConfig, Critic, Generator, drive, load_generator
from keyface.core.methods.cptnet.trainer import TrainConfig, Trainer
from keyface.core.pixels import quantise
from keyface.core.synth.dataset import SynthConfig, write_dataset


def tiny(variant="mask+grid+ms", k=4):
    return CPTNetConfig(size=32, base=4, blocks=1, k=k, variant=variant, fusion_base=4, critic_base=4,
                        critic_layers=3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cptnet_data")
    write_dataset(root, SynthConfig(characters=6, poses_per_character=6, size=32, seed=5, test_fraction=0.34,
                                    framing="head", poses="all", project="pose5"), workers=1)
    return root


@pytest.fixture(scope="module")
def tiny_features(tiny_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "features.safetensors"
    rec = train_features(tiny_data, path, steps=40, batch=8, width=0.125, log=lambda m: None)
    return path, rec


def test_drive_is_zero_at_rest():
    assert np.array_equal(drive(np.array([1, 1, 0, 0, 0])), np.zeros(5))
    assert np.allclose(drive(np.array([0, 0.5, 0.3, -1, 1])), [1, 0.5, 0.3, -1, 1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_gradients(variant):
    torch.manual_seed(0)
    g = Generator(tiny(variant))
    x = torch.rand(2, 4, 32, 32) * 2 - 1
    out = g(x, torch.rand(2, 5))
    assert out["out"].shape == x.shape and out["face_mask"].shape == (2, 1, 32, 32)
    assert ("flow" in out) == ("grid" in variant) and ("fusion_mask" in out) == (variant.startswith("mask+grid"))
    out["out"].abs().mean().backward()
    assert all(p.grad is not None for p in g.trunk.parameters())
    assert Critic(tiny(variant))(x).shape == (2, 1, 4, 4)


def test_mask_step_is_a_convex_blend_and_the_grid_starts_as_identity():
    torch.manual_seed(1)
    g = Generator(tiny())
    x = torch.rand(2, 4, 32, 32) * 2 - 1
    d = torch.rand(2, 5)
    with torch.no_grad():
        o = g.trunk(x, d)
        a, c = torch.sigmoid(o[:, :1]), torch.tanh(o[:, 1:])
        y, a2 = g.mask_step(x, d)
        assert torch.allclose(y, (1 - a) * c + a * x) and torch.equal(a, a2)
        full = g(x, d)                          # the face stage is this step at the face part of d, its logit exposed
        face_d = d * torch.tensor([1.0, 1, 1, 0, 0])
        assert torch.allclose(full["face"], g.mask_step(x, face_d)[0], atol=1e-6)
        assert torch.allclose(torch.sigmoid(full["face_logit"]), full["face_mask"])
        assert torch.allclose(full["face_logit"], g.trunk(x, face_d)[:, :1])
        g.trunk.up[-1].bias[0] = 50.0  # A → 1: the input is kept
        assert torch.allclose(g.mask_step(x, d)[0], x, atol=1e-6)
        out, flow = g.grid_step(x, d)
        assert torch.equal(flow, torch.zeros_like(flow)) and torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("k", [1, 4])
def test_cascade_is_k_applications_with_pose_times_i_over_k(k):
    torch.manual_seed(2)
    g = Generator(tiny(k=k))
    x = torch.rand(1, 4, 32, 32) * 2 - 1
    d = torch.tensor([[0.5, 0.0, 0.7, -0.4, 0.9]])
    with torch.no_grad():
        out = g(x, d)
        face, _ = g.mask_step(x, d * torch.tensor([1.0, 1, 1, 0, 0]))
        assert torch.allclose(out["face"], face)
        y = face
        for i in range(1, k + 1):
            y, _ = g.mask_step(y, torch.tensor([[0.0, 0, 0, -0.4, 0.9]]) * (i / k))
        assert torch.allclose(out["mask_out"], y, atol=1e-6)
        grid, _ = g.grid_step(face, torch.tensor([[0.0, 0, 0, -0.4, 0.9]]))
        a = g.fusion(out["mask_out"], grid)
        assert torch.allclose(out["out"], (1 - a) * out["mask_out"] + a * grid, atol=1e-6)


def test_loss_terms(tiny_features):
    from keyface.core.features import load_features

    torch.manual_seed(3)
    feats = load_features(tiny_features[0])
    crit = Critic(tiny())
    w = LossWeights()
    a, b = torch.rand(2, 4, 32, 32) * 2 - 1, torch.rand(2, 4, 32, 32) * 2 - 1
    t = generator_losses(a, b, w, feats, crit)
    assert torch.allclose(t["pair"], (a - b).abs().mean())
    assert torch.allclose(t["adv"], -crit(a).mean())
    assert torch.allclose(t["total"], w.pair * t["pair"] + w.perc * t["perc"] + w.adv * t["adv"])
    same = generator_losses(a, a, w, feats)
    assert same["pair"] == 0 and same["perc"] == 0 and "adv" not in same
    c = critic_loss(crit, b, a.detach(), w)
    assert torch.allclose(c["d_adv"], crit(a).mean() - crit(b).mean()) and c["d_gp"] >= 0
    assert torch.allclose(c["d_total"], c["d_adv"] + w.gp * c["d_gp"])
    # the changed-pixel term (off by default): L1 over the pixels where the target differs from the source
    assert "changed" not in generator_losses(a, b, w, source=b)
    w2 = LossWeights(changed=1000.0)
    src = b.clone()
    src[:, :, :4, :4] += 0.5                                  # the "pose" changed a 4×4 corner of each sample
    t2 = generator_losses(a, b, w2, source=src)
    assert torch.allclose(t2["changed"], (a - b)[:, :, :4, :4].abs().mean())
    assert torch.allclose(t2["total"], w2.pair * t2["pair"] + w2.changed * t2["changed"])
    # the cancelled term (off by default): only the pose-dependent part of the output, out − rest_out, is judged
    w3 = LossWeights(cancelled=1000.0, perc=0.0)
    t3 = generator_losses(a, b, w3, source=src, rest_out=a - (b - src))    # out − rest_out = the true change
    assert t3["cancelled"] < 1e-6 and torch.allclose(t3["total"], w3.pair * t3["pair"] + w3.cancelled * t3["cancelled"])
    same_at_rest = generator_losses(b, b, w3, source=src, rest_out=b)      # right image, but not from the pose
    assert torch.allclose(same_at_rest["cancelled"], (b - src)[:, :, :4, :4].abs().mean()) and same_at_rest["pair"] == 0
    assert "cancelled" not in generator_losses(a, b, w3, source=src)       # needs the rest-pose output
    # everywhere: a change the pose did not ask for (outside the 4×4 corner) costs per changed pixel, too
    w4 = LossWeights(cancelled=1000.0, perc=0.0, cancelled_everywhere=True)
    assert generator_losses(a, b, w4, source=src, rest_out=a - (b - src))["cancelled"] < 1e-6
    extra = a - (b - src)
    extra[:, :, 10:14, 10:14] -= 0.25                                        # a spurious 4×4 change elsewhere
    t4 = generator_losses(a, b, w4, source=src, rest_out=extra)
    assert torch.allclose(t4["cancelled"], torch.tensor(0.25))               # 16 px × 0.25 / 16 changed px
    assert generator_losses(a, b, w3, source=src, rest_out=extra)["cancelled"] < 1e-6   # unseen over changed px only
    # the unchanged pixels weighted: the stray change costs ``cancelled_outside`` times as much; 0 = changed px only
    for outside in (0.1, 0.0):
        w5 = LossWeights(cancelled=1000.0, perc=0.0, cancelled_everywhere=True, cancelled_outside=outside)
        t5 = generator_losses(a, b, w5, source=src, rest_out=extra)
        assert torch.allclose(t5["cancelled"], torch.tensor(0.25 * outside))
    missed = generator_losses(b, b, w5, source=src, rest_out=b)["cancelled"]   # a missed change costs in full
    assert torch.allclose(missed, same_at_rest["cancelled"])
    # the saturation term: only the attention logits beyond ±ceiling cost, squared
    w6 = LossWeights(perc=0.0, saturation=2.0, saturation_ceiling=5.0)
    logit = torch.zeros(2, 1, 4, 4)
    logit[0, 0, 0, 0], logit[1, 0, 1, 1], logit[1, 0, 2, 2] = 8.0, -7.0, 4.9
    t6 = generator_losses(a, b, w6, face_logit=logit)
    assert torch.allclose(t6["saturation"], torch.tensor((9.0 + 4.0) / 32))
    assert torch.allclose(t6["total"], w6.pair * t6["pair"] + 2.0 * t6["saturation"])
    assert "saturation" not in generator_losses(a, b, w, face_logit=logit)
    # the content term: the face stage's content against the target on the changed pixels of face-only pairs
    w7 = LossWeights(perc=0.0, content=100.0)
    content = b.clone()
    content[1] = 5.0                                                         # wrong, but sample 1 moves the head
    t7 = generator_losses(a, b, w7, source=src, face_content=content, face_only=torch.tensor([True, False]))
    assert t7["content"] < 1e-6 and torch.allclose(t7["total"], w7.pair * t7["pair"])
    content[0, :, :4, :4] += 0.3                                             # off by 0.3 on sample 0's changed corner
    content[0, :, 8:, 8:] += 9.0                                             # unchanged pixels do not count
    t7 = generator_losses(a, b, w7, source=src, face_content=content, face_only=torch.tensor([True, False]))
    assert torch.allclose(t7["content"], torch.tensor(0.3))
    both = generator_losses(a, b, w7, source=src, face_content=content, face_only=torch.tensor([True, True]))
    assert torch.allclose(both["content"], (0.3 + (5.0 - b[1, :, :4, :4]).abs().mean()) / 2)
    none = generator_losses(a, b, w7, source=src, face_content=content, face_only=torch.tensor([False, False]))
    assert none["content"] == 0


def test_feature_network(tiny_features):
    path, rec = tiny_features
    assert rec["last_loss"] < rec["first_loss"]           # it learns on the tiny set
    net = FeatureNet(FeatureConfig(width=0.25))
    x = torch.rand(2, 4, 64, 64, requires_grad=True)
    feats = net(x)
    assert [f.shape[1:] for f in feats] == [(16, 64, 64), (32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert len(TAPS) == 4
    y = torch.rand(2, 4, 64, 64)
    loss = perceptual_loss(net, x, y)
    loss.backward()
    assert loss > 0 and x.grad is not None and perceptual_loss(net, y, y) == 0
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["method"] == "features" and meta["characters"] == 3


def _cfg(data, feats, **kw):
    return TrainConfig(**{"data": str(data), "batch": 4, "eval_every": 1000, "eval_characters": 2,
                          "model": tiny(), "features": str(feats), **kw})


def test_tiny_overfit_loss_falls(tiny_data, tiny_features, tmp_path):
    tr = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", lr=3e-3), tmp_path / "run", device="cpu",
                 log=lambda m: None)
    tr.rest, tr.posed, tr.d = tr.rest[:4], tr.posed[:4], tr.d[:4]  # one fixed batch
    first = [tr.train_step()["total"] for _ in range(3)]
    for _ in range(40):
        last = tr.train_step()["total"]
    assert last < 0.6 * np.mean(first)
    # with the cancelled term the generator also runs at the rest pose; the term is logged and training lowers it
    tr.cfg.weights.cancelled = 1000.0
    first = [tr.train_step()["cancelled"] for _ in range(3)]
    for _ in range(25):
        last = tr.train_step()["cancelled"]
    assert 0 < last < 0.8 * np.mean(first)


def test_expression_share_fills_batches_with_moving_eyes_or_mouth(tiny_data, tiny_features, tmp_path):
    from keyface.core.errors import KeyfaceError
    from keyface.core.methods.cptnet.trainer import EXPRESSIVE

    tr = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", batch=8, expression_share=0.5), tmp_path / "a",
                 device="cpu", log=lambda m: None)
    moving = np.abs(tr.d[:, :3]).max(axis=1) > EXPRESSIVE
    assert 0 < moving.sum() < len(moving)
    for k in range(20):
        idx = tr.batch_indices(k)
        assert len(idx) == 8 and moving[idx[:4]].all() and np.array_equal(idx, tr.batch_indices(k))  # seeded
    uniform = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", batch=8), tmp_path / "b", device="cpu",
                      log=lambda m: None)
    assert moving[np.concatenate([uniform.batch_indices(k) for k in range(20)])].mean() < 0.5
    with pytest.raises(KeyfaceError, match="expression share"):
        Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", expression_share=1.5), tmp_path / "c",
                device="cpu", log=lambda m: None)


def test_attention_scale_rescales_only_the_face_attention_of_init_weights(tiny_data, tiny_features, tmp_path):
    first = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", steps=1), tmp_path / "a", device="cpu",
                    log=lambda m: None)
    first.fit()
    init = tmp_path / "a" / "generator.safetensors"
    tr = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", init=str(init), attention_scale=0.25, steps=1),
                 tmp_path / "b", device="cpu", log=lambda m: None)
    before, after = load_generator(init).state_dict(), tr.gen.state_dict()
    head, bias = "trunk.up.2.weight", "trunk.up.2.bias"                  # the mask generator's last layer
    assert torch.allclose(after[head][0], 0.25 * before[head][0]) and torch.equal(after[head][1:], before[head][1:])
    assert torch.allclose(after[bias][0], 0.25 * before[bias][0]) and torch.equal(after[bias][1:], before[bias][1:])
    assert all(torch.equal(after[k], before[k]) for k in before if k not in (head, bias))
    x, d = torch.rand(1, 4, 32, 32) * 2 - 1, torch.rand(1, 5)
    with torch.no_grad():
        assert torch.allclose(tr.gen(x, d)["face_logit"], 0.25 * load_generator(init)(x, d)["face_logit"], atol=1e-5)
    tr.fit()
    resumed = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", steps=2), tmp_path / "b", device="cpu",
                      resume=True, log=lambda m: None)                  # resuming does not scale again
    assert resumed.cfg.attention_scale == 0.25 and resumed.step == 1
    saved = load_generator(tmp_path / "b" / "generator.safetensors").state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in resumed.gen.state_dict().items())


def test_face_stage_trains_the_face_stage_alone(tiny_data, tiny_features, tmp_path, monkeypatch):
    # --face-stage: only the pairs whose head is at rest, only the face stage's image supervised (what the full
    # generator calls its "face"), the head stage's own layers untouched, and the loss falls on them.
    from keyface.core.errors import KeyfaceError
    from keyface.core.methods.cptnet import trainer as trainer_module
    from keyface.core.training import load_split

    d_all = drive(load_split(tiny_data, "train", ("param_pose5",))["param_pose5"])
    at_rest = (d_all[:, 3:] == 0).all(axis=1)
    assert 0 < at_rest.sum() < len(d_all)
    weights = LossWeights(cancelled=1000.0, cancelled_everywhere=True)
    tr = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", lr=3e-3, face_stage=True, weights=weights),
                 tmp_path / "run", device="cpu", log=lambda m: None)
    assert len(tr.d) == at_rest.sum() and np.array_equal(tr.d, d_all[at_rest])
    x, _, d = tr._batch(0)
    with torch.no_grad():
        assert torch.equal(tr._forward(x, d)["out"], tr.gen(x, d)["face"])
    before = {k: v.clone() for k, v in tr.gen.state_dict().items()}
    losses = [tr.train_step()["total"] for _ in range(60)]
    assert np.mean(losses[-5:]) < 0.6 * losses[0], losses  # the first loss is before any update
    after = tr.gen.state_dict()
    head_stage = [k for k in before if k.startswith(("grid_up.", "fusion."))]
    assert head_stage and all(torch.equal(before[k], after[k]) for k in head_stage)
    assert not torch.equal(before["trunk.up.2.weight"], after["trunk.up.2.weight"])
    cols = load_split(tiny_data, "train", ("rest", "posed", "param_pose5"))
    cols["param_pose5"][:, 4] = 0.5                                       # every head turned
    monkeypatch.setattr(trainer_module, "load_split", lambda *a, **k: cols)
    with pytest.raises(KeyfaceError, match="keeps the head at rest"):
        Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", face_stage=True), tmp_path / "none",
                device="cpu", log=lambda m: None)


def test_coordinate_channels_tell_positions_apart_and_upgrade_older_weights():
    from keyface.core.blocks import EncoderDecoder, positions
    from keyface.core.errors import KeyfaceError
    from keyface.core.training import load_upgraded, upgraded_config

    p = positions(2, w=4)
    assert p.shape == (1, 2, 2, 4)
    assert torch.allclose(p[0, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(p[0, 1, :, 0], torch.tensor([-0.5, 0.5]))
    torch.manual_seed(0)
    old = EncoderDecoder(4, 2, 3, 8, 1, "instance", "relu").eval()
    new = EncoderDecoder(4, 2, 3, 8, 1, "instance", "relu", coords=True).eval()
    load_upgraded(new, old.state_dict())        # zero weights for the coordinate channels: the same function
    x, c = torch.zeros(1, 4, 128, 128), torch.ones(1, 3)   # a blank image: nothing in it says left or right

    def shift_change(o):  # away from the border, how much the output differs from itself 4 px (one period) along x
        return (o[..., 48:-48, 48:-52] - o[..., 48:-48, 52:-48]).abs().max()

    with torch.no_grad():
        assert torch.equal(old(x, c), new(x, c))
        assert shift_change(old(x, c)) < 1e-5   # translation-equivariant (two stride-2 layers: period 4)
        torch.nn.init.normal_(new.down[0][0].weight[:, -2:], std=0.5)
        assert shift_change(new(x, c)) > 1e-3   # with the coordinates it can place a change
    assert upgraded_config(CPTNetConfig(base=4), CPTNetConfig(coords=True)) == CPTNetConfig(base=4, coords=True)
    assert upgraded_config(CPTNetConfig(base=4, coords=True), CPTNetConfig()).coords
    with pytest.raises(KeyfaceError, match="do not fit"):
        load_upgraded(EncoderDecoder(4, 2, 3, 16, 1, "instance", "relu"), old.state_dict())   # another width
    wide = Generator(CPTNetConfig(**{**tiny().to_dict(), "coords": True}))
    load_upgraded(wide, Generator(tiny()).state_dict())
    assert wide(torch.zeros(1, 4, 32, 32), torch.zeros(1, 5))["out"].shape == (1, 4, 32, 32)


def test_wink_share_fills_batches_with_one_eye_pairs(tiny_data, tiny_features, tmp_path):
    import shutil

    from keyface.core.errors import KeyfaceError
    from keyface.core.methods.cptnet.trainer import WINK

    with pytest.raises(KeyfaceError, match="wink share"):  # the tiny corpus has no one-eye pair
        Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", wink_share=0.25), tmp_path / "a", device="cpu",
                log=lambda m: None)
    data = tmp_path / "data"  # a copy where two training pairs are labelled as winks (sampling only looks at labels)
    shutil.copytree(tiny_data, data)
    shard = sorted((data / "train").glob("*.npz"))[0]
    cols = dict(np.load(shard))
    cols["param_pose5"][:2, :2] = [[0.0, 1.0], [1.0, 0.2]]
    cols["param_pose5"][2:5, :3] = [1.0, 1.0, 0.8]  # three open mouths, eyes open
    np.savez(shard, **cols)
    tr = Trainer(_cfg(data, tiny_features[0], mode="supervised", batch=8, wink_share=0.25, expression_share=0.25,
                      mouth_share=0.25), tmp_path / "b", device="cpu", log=lambda m: None)
    wink = np.abs(tr.d[:, 0] - tr.d[:, 1]) > WINK
    mouth = np.abs(tr.d[:, 2]) > 0.1
    moving = np.abs(tr.d[:, :3]).max(axis=1) > 0.1
    assert wink.sum() == 2 and mouth.sum() >= 3
    for k in range(20):
        idx = tr.batch_indices(k)
        assert len(idx) == 8 and wink[idx[:2]].all() and mouth[idx[2:4]].all() and moving[idx[4:6]].all()
        assert np.array_equal(idx, tr.batch_indices(k))
    with pytest.raises(KeyfaceError, match="sum at most 1"):
        Trainer(_cfg(data, tiny_features[0], mode="supervised", wink_share=0.6, expression_share=0.6),
                tmp_path / "c", device="cpu", log=lambda m: None)


def test_cli_train_cptnet_records_our_batch_and_loss_options(tiny_data, tiny_features, tmp_path, capsys):
    from keyface.core.cli import main

    args = ["train", "cptnet", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--steps", "1", "--batch", "2",
            "--base", "4", "--blocks", "1", "--k", "2", "--mode", "supervised", "--features", str(tiny_features[0]),
            "--quiet", "--device", "cpu"]
    assert main([*args, "--expression-share", "0.5", "--flip", "--cancelled-weight", "100",
                 "--cancelled-everywhere", "--cancelled-outside", "0.2"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["expression_share"] == 0.5 and config["flip"] is True and config["weights"]["cancelled"] == 100
    assert config["weights"]["cancelled_everywhere"] is True and config["weights"]["cancelled_outside"] == 0.2
    for bad in ("1.5", "-0.1", "nan", "x"):                     # a weight outside [0, 1] is refused before any work
        with pytest.raises(SystemExit):
            main([*args, "--cancelled-everywhere", "--cancelled-outside", bad])
    assert "--cancelled-outside" in capsys.readouterr().err
    assert config["wink_share"] == 0 and config["model"]["coords"] is False
    args[5] = str(tmp_path / "coords")
    assert config["face_stage"] is False
    assert main([*args, "--coords", "--init", str(tmp_path / "run" / "generator.safetensors"), "--face-stage"]) == 0
    config = json.loads((tmp_path / "coords" / "config.json").read_text())
    assert config["model"]["coords"] is True and config["face_stage"] is True
    args[5] = str(tmp_path / "winks")
    assert main([*args, "--wink-share", "0.5"]) == 2   # the tiny corpus has no one-eye pair: a clear refusal
    assert "wink share" in capsys.readouterr().err


def test_flip_mirrors_pairs_and_their_pose():
    from keyface.core.methods.cptnet.trainer import mirror
    from keyface.core.rig import character_schema
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.render import FRAMINGS, REST
    from keyface.core.synth.sample import PairRenderer

    # the engine agrees: a left blink mirrored closes the eye that a right blink closes
    pr = PairRenderer(sample_character(11), (128, 128), FRAMINGS["head"])
    assert "blink_left" in character_schema().names
    rest = pr.rest.image
    left = pr.renderer.render({**REST, "blink_left": 1.0}).image
    right = pr.renderer.render({**REST, "blink_right": 1.0}).image
    changed = lambda img: np.abs(img - rest).max(axis=2) > 8 / 255  # noqa: E731
    mirrored = np.abs(left[:, ::-1] - rest[:, ::-1]).max(axis=2) > 8 / 255
    overlap = (mirrored & changed(right)).sum() / (mirrored | changed(right)).sum()
    assert overlap > 0.5 and (changed(left) & changed(right)).sum() < 0.1 * changed(left).sum()
    # the function: images flipped along x, eyes swapped, yaw negated, only where asked; twice = unchanged
    r, q = np.random.rand(3, 8, 8, 4), np.random.rand(3, 8, 8, 4)
    d = np.array([[1, 0, 0.5, 0.2, 0.7]] * 3, np.float32)
    which = np.array([True, False, True])
    r2, q2, d2 = mirror(r, q, d, which)
    assert np.array_equal(r2[0], r[0, :, ::-1]) and np.array_equal(q2[1], q[1]) and np.array_equal(d2[1], d[1])
    assert np.allclose(d2[0], [0, 1, 0.5, 0.2, -0.7])
    r3, q3, d3 = mirror(r2, q2, d2, which)
    assert np.array_equal(r3, r) and np.array_equal(q3, q) and np.array_equal(d3, d)


def test_flip_option_in_training(tiny_data, tiny_features, tmp_path):
    tr = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised", flip=True), tmp_path / "f", device="cpu",
                 log=lambda m: None)
    plain = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised"), tmp_path / "p", device="cpu",
                    log=lambda m: None)
    flipped = 0
    for k in range(6):
        (x, _, d), (x0, _, d0) = tr._batch(k), plain._batch(k)          # same indices, some of them mirrored
        same = [torch.equal(x[i], x0[i]) for i in range(len(x))]
        mirrored = [torch.equal(x[i], x0[i].flip(-1)) for i in range(len(x))]
        assert all(s or m for s, m in zip(same, mirrored, strict=True))
        for i in range(len(x)):
            if not same[i]:
                flipped += 1
                assert torch.equal(d[i], d0[i][[1, 0, 2, 3, 4]] * torch.tensor([1, 1, 1, 1, -1.0]))
    assert 0 < flipped < 6 * len(x)
    assert tr.train_step()["total"] > 0


def test_gan_step_fit_resume_and_evaluation(tiny_data, tiny_features, tmp_path):
    run = tmp_path / "run"
    tr = Trainer(_cfg(tiny_data, tiny_features[0], steps=2, critic_steps=2, eval_every=2, lr_schedule="linear_tail",
                      decay_steps=1), run, device="cpu", log=lambda m: None)
    result = tr.fit()
    assert set(result) >= {"eyes closed", "turn 20° (yaw 1)"} and 0 <= result["eyes closed"]["ssim"] <= 1
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"d_adv", "d_gp", "adv", "pair", "perc"} <= set(logs[0])
    gen = load_generator(run / "generator.safetensors")
    assert gen.cfg == tr.cfg.model and (run / "best.safetensors").exists()
    resumed = Trainer(_cfg(tiny_data, tiny_features[0], steps=3), run, device="cpu", resume=True, log=lambda m: None)
    assert resumed.step == 2 and resumed.cfg.critic_steps == 2


def test_validation_judges_the_bias_cancelled_output():
    """The evaluation reports what the render path applies, G(I, d) − G(I, rest) + I: a generator that adds the same
    tint whatever the pose is wrong on its raw output, but its cancelled output is the unchanged image; the score
    (changed-pixel error over the identity's, per pose) is then exactly −1."""
    from keyface.core.methods.cptnet.trainer import Trainer, evaluate_pairs

    class Tint(torch.nn.Module):
        def forward(self, x, d):
            return {"out": (x + 0.4).clamp(-1, 1)}

    rng = np.random.default_rng(0)
    rest = rng.integers(0, 256, (3, 16, 16, 4), dtype=np.uint8)
    rest[..., 3] = 255
    posed = rest.copy()
    posed[:, 4:8, 4:8, :3] = 255 - posed[:, 4:8, 4:8, :3]                  # the pose changes a 4×4 patch
    pose = np.tile(np.array([0, 0, 1, 0, 0], np.float32), (3, 1))
    r = evaluate_pairs(Tint(), rest, posed, pose, "cpu", batch=2)
    ours, base = r["ours"], r["identity"]
    assert ours["l1"] > base["l1"] + 0.05
    assert ours["cancelled_l1"] == pytest.approx(base["l1"], abs=2e-3)
    assert ours["cancelled_changed_l1"] == pytest.approx(base["changed_l1"], abs=2e-3) and base["changed_l1"] > 0.2
    row = {**ours, **{f"{k}_identity": v for k, v in base.items()}}
    assert Trainer.score(None, {"a": row, "b": row}) == pytest.approx(-1, abs=0.01)


def test_validation_scores_the_held_out_paintings_of_a_teacher_corpus(tiny_data, tiny_features, tmp_path):
    """With a teacher corpus (``keyface corpus``) among the data, validation adds a row on its held-out pairs whose
    target is the teacher's frame (the test paintings; engine-truth pairs and training pairs are left out), counted once
    however often ``--data`` repeats the corpus, and the score averages it with the engine's rows."""
    import json
    import shutil

    from keyface.core.methods.cptnet.trainer import TEACHER_ROW, evaluate_pairs

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_data, corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    (corpus / "manifest.json").write_text(json.dumps({**manifest, "kind": "teacher"}))
    painted = []
    for shard in sorted((corpus / "test").glob("*.npz")):
        cols = dict(np.load(shard))
        truth = np.arange(len(cols["rest"])) % 3 == 0       # every third pair has engine truth
        cols["has_truth"] = truth
        np.savez_compressed(shard, **cols)
        painted += [(r, p, d) for r, p, d, t in zip(cols["rest"], cols["posed"], cols["param_pose5"], truth,
                                                    strict=True) if not t]
    plain = Trainer(_cfg(tiny_data, tiny_features[0], mode="supervised"), tmp_path / "a", device="cpu",
                    log=lambda m: None)
    assert plain.eval_teacher is None and TEACHER_ROW not in plain.evaluate()
    tr = Trainer(_cfg(f"{tiny_data},{corpus},{corpus}", tiny_features[0], mode="supervised"), tmp_path / "b",
                 device="cpu", log=lambda m: None)
    assert len(tr.rest) == 3 * len(plain.rest)  # training: the repeated corpus weighs twice
    rest, posed, d = (np.stack(c) for c in zip(*painted, strict=True))
    assert np.array_equal(tr.eval_teacher["rest"], rest) and np.array_equal(tr.eval_teacher["posed"], posed)
    rows = tr.evaluate()
    direct = evaluate_pairs(tr.gen, rest, posed, d, "cpu")
    assert rows[TEACHER_ROW]["cancelled_changed_l1"] == pytest.approx(direct["ours"]["cancelled_changed_l1"])
    assert rows[TEACHER_ROW]["changed_l1_identity"] == pytest.approx(direct["identity"]["changed_l1"])
    engine = {k: v for k, v in rows.items() if k != TEACHER_ROW}
    assert engine.keys() == plain.evaluate().keys()
    n, paint = len(rows), tr.score({TEACHER_ROW: rows[TEACHER_ROW]})
    assert tr.score(rows) == pytest.approx((tr.score(engine) * (n - 1) + paint) / n)
    # a corpus without held-out paintings (no --test-paintings) trains and adds no row
    bare = tmp_path / "bare"
    shutil.copytree(corpus, bare)
    shutil.rmtree(bare / "test")
    held = json.loads((bare / "manifest.json").read_text())
    held["shards"] = {k: v for k, v in held["shards"].items() if v["split"] != "test"}
    (bare / "manifest.json").write_text(json.dumps(held))
    assert Trainer(_cfg(f"{tiny_data},{bare}", tiny_features[0], mode="supervised"), tmp_path / "c", device="cpu",
                   log=lambda m: None).eval_teacher is None


@pytest.fixture(scope="module")
def random_cptnet(tmp_path_factory):
    """A registered CPTNet with random weights (the render path's mechanics, not quality) and a character image."""
    from keyface.core import models
    from keyface.core.methods.cptnet import load
    from keyface.core.methods.cptnet.networks import save_generator
    from keyface.core.pixels import quantise
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.render import FRAMINGS
    from keyface.core.synth.sample import PairRenderer

    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("cptnet_model") / "cpt.safetensors"
    save_generator(Generator(CPTNetConfig(size=64, base=4, blocks=1, k=2, fusion_base=4)), path)
    img = quantise(PairRenderer(sample_character(9), (240, 320), FRAMINGS["head"]).rest.image)
    with models.registered(models.ModelInfo("test-random-cptnet", "cptnet", "pose5", "random weights (tests)", path,
                                            load)):
        yield "test-random-cptnet", path, img


def test_render_path_with_residual_weights(random_cptnet):
    # a registered CPTNet renders through FrameJob + ResWarp; the rest pose reproduces the source exactly; other poses
    # change only the head crop around the face box; the runtime's residual weight is used.
    from keyface.core.methods.cptnet.runtime import CPTNetRuntime
    from keyface.core.pipeline import FrameJob

    model, path, img = random_cptnet
    box = (40, 60, 160, 160)
    job = FrameJob.prepare(img, model, box)
    rt = CPTNetRuntime(path)
    g = rt(job.lifter.low_input()[None], np.array([[0, 1, 0.5, 0.3, -0.8]], np.float32))
    out, flow, weight = g.out, g.flow, g.weight
    assert out.shape == (1, 64, 64, 4) and flow.shape == (1, 64, 64, 2) and weight.shape == (1, 64, 64)
    assert 0 <= weight.min() and weight.max() <= 1
    rest, turned = job.frames(np.array([[1, 1, 0, 0, 0], [0, 1, 0.5, 0.3, -0.8]], np.float32))
    assert np.array_equal(rest, img)
    assert tuple(job.face_box) == box and tuple(job.box) == (0, 0, 240, 240)  # the head crop, shrunk to the image
    x, y, w, h = job.box
    outside = np.ones(img.shape[:2], bool)
    outside[y:y + h, x:x + w] = False
    assert not np.array_equal(turned, img) and np.array_equal(turned[outside], img[outside])
    _, _, weights = job.generate(np.array([[0, 1, 0.5, 0.3, -0.8]], np.float32))
    assert weights is not None and weights.shape == (1, 64, 64)


def test_head_crop_around_a_face_box():
    from keyface.core.box import head_crop
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.face import Pose
    from keyface.core.synth.render import FRAMINGS, REST, Placement
    from keyface.core.synth.sample import PairRenderer

    # the engine's own face box in the head framing maps back to the whole head-framed image ...
    pr = PairRenderer(sample_character(5), (256, 256), FRAMINGS["head"])
    face = pr.face_box(Pose(dict(REST)))
    assert np.allclose(tuple(head_crop(face, 256, 256)), (0, 0, 256, 256), atol=2)
    # ... and, inside a larger image (no clamping), to the head framing's square: the face box's centre at (0.5, 0.45)
    big = PairRenderer(sample_character(5), (600, 600), Placement(center=(0.5, 0.5), head=0.25))
    crop = head_crop(big.face_box(Pose(dict(REST))), 600, 600)
    fx, fy, fw, fh = big.face_box(Pose(dict(REST)))
    assert crop.w == 2 * fw and crop.x + 0.5 * crop.w == pytest.approx(fx + fw / 2, abs=1)
    assert crop.y + 0.45 * crop.h == pytest.approx(fy + fh / 2, abs=1)
    # near an edge it is shifted inside, and shrunk only when the image is too small
    assert tuple(head_crop((0, 0, 100, 100), 1000, 800)) == (0, 0, 200, 200)
    assert tuple(head_crop((900, 700, 100, 100), 1000, 800)) == (800, 600, 200, 200)
    assert tuple(head_crop((10, 10, 100, 100), 150, 120)) == (0, 0, 120, 120)


def test_ablation_table(tiny_data, tmp_path, capsys):
    from keyface.core.cli import main
    from keyface.core.methods.cptnet.networks import save_generator

    paths = []
    for variant in ("mask+grid+ms", "grid"):  # given out of order: the table uses the paper's order
        torch.manual_seed(0)
        path = tmp_path / f"{variant}.safetensors"
        save_generator(Generator(tiny(variant)), path, {"steps": 7})
        paths.append(str(path))
    assert main(["eval", "cptnet", *paths, "--data", str(tiny_data), "--json", str(tmp_path / "t.json")]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith(("identity", "ours"))]
    assert [ln.split()[1] for ln in lines] == ["(input)", "(grid)", "(mask+grid+ms)"]
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["variant"] for r in rows] == ["grid", "mask+grid+ms"] and all(0 <= r["ssim"] <= 1 for r in rows)
    assert all(r["l1"] > 0 and r["rmse"] >= r["l1"] for r in rows)  # RMSE ≥ mean |error| always


def test_pose5_scene_renders_and_pose_command(random_cptnet, tmp_path):
    from keyface.core.cli import main
    from keyface.core.imageio import read_image, write_image
    from keyface.core.pipeline import render_scene
    from keyface.core.scene import load_scene

    model, _, img = random_cptnet
    write_image(tmp_path / "c.png", img)
    scene = {"keyface_scene": 1, "source": "c.png", "schema": "pose5", "model": model,
             "face_box": [40, 60, 160, 160], "fps": 24, "frame_range": [0, 2],
             "tracks": {"eye_left": {"keys": [{"frame": 0, "value": 1}, {"frame": 2, "value": 0}]},
                        "head_yaw": {"keys": [{"frame": 0, "value": 0}, {"frame": 2, "value": 0.8}]}}}
    (tmp_path / "s.json").write_text(json.dumps(scene))
    frames = render_scene(load_scene(tmp_path / "s.json"), tmp_path / "out")
    assert len(frames) == 3
    assert np.array_equal(read_image(frames[0]), img)             # frame 0 is the rest pose: the source
    assert not np.array_equal(read_image(frames[2]), img)
    assert main(["pose", str(tmp_path / "c.png"), "--model", model, "--box", "40,60,160,160",
                 "--out", str(tmp_path / "p.png")]) == 0
    assert np.array_equal(read_image(tmp_path / "p.png"), img)    # no --set: the rest pose (eyes open)


def test_trained_weights_are_a_model_id(random_cptnet, tmp_path):
    """``cptnet-pose5:WEIGHTS`` (a trained .safetensors, or the run folder holding generator.safetensors) poses as the
    same weights registered under a name do; anything else is refused with the reason."""
    import shutil

    from keyface.core import models
    from keyface.core.cli import main
    from keyface.core.errors import KeyfaceError
    from keyface.core.imageio import read_image, write_image

    model, path, img = random_cptnet
    run = tmp_path / "run"
    run.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(path.with_suffix(suffix), run / f"generator{suffix}")
    write_image(tmp_path / "c.png", img)
    frames = {}
    for m in (model, f"cptnet-pose5:{path}", f"cptnet-pose5:{run}"):
        out = tmp_path / f"{len(frames)}.png"
        assert main(["pose", str(tmp_path / "c.png"), "--model", m, "--box", "40,60,160,160", "--set",
                     "head_yaw=0.8", "--set", "eye_left=0", "--out", str(out)]) == 0
        frames[m] = read_image(out)
    a, b, c = frames.values()
    assert not np.array_equal(a, img) and np.array_equal(a, b) and np.array_equal(a, c)
    assert models.get_model(f"cptnet-pose5:{run}").schema.name == "pose5"
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "c.png", tmp_path / "missing.safetensors"):
        with pytest.raises(KeyfaceError, match="not CPTNet weights"):
            models.get_model(f"cptnet-pose5:{bad}")


def test_shipped_feature_network_sees_identity_more_than_pose():
    # The perceptual distance between two poses of one character is smaller than between two characters at rest.
    from keyface.core.features import load_features
    from keyface.core.pixels import to_net
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.render import FRAMINGS, REST
    from keyface.core.synth.sample import PairRenderer

    net = load_features()
    dists = []
    for a, b in ((11, 12), (13, 14), (15, 16)):
        pa, pb = (PairRenderer(sample_character(s), (128, 128), FRAMINGS["head"]) for s in (a, b))
        rest_a, rest_b = quantise(pa.rest.image), quantise(pb.rest.image)
        posed_a = quantise(pa.renderer.render({**REST, "blink_left": 1.0, "blink_right": 1.0, "head_yaw": 8.0}).image)
        x = to_net(np.stack([rest_a, posed_a, rest_b]))
        with torch.no_grad():
            f = net(x)
        dists.append(tuple(sum(float((t[0] - t[j]).abs().mean()) for t in f) for j in (1, 2)))
    assert all(same < other for same, other in dists), dists


def _shipped_frame(seed: int, pose5, size: int = 256):
    """An unseen engine character at ``size``² in head framing, posed by the shipped model through the render path
    (head crop → generator → ResWarp): (its PairRenderer, the rest image, the frame)."""
    from keyface.core.pipeline import FrameJob
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.render import FRAMINGS
    from keyface.core.synth.sample import PairRenderer

    pr = PairRenderer(sample_character(seed), (size, size), FRAMINGS["head"])
    img = quantise(pr.rest.image)
    frame = FrameJob.prepare(img, "cptnet-pose5", (0, 0, size, size)).frames(np.asarray([pose5], np.float32))[0]
    return pr, img, frame


@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped CPTNet weights not present")
@pytest.mark.parametrize("seed", [987_654, 11])
def test_shipped_model_eye_left_changes_mainly_the_left_eye(seed):
    # Through the render path (crop → generator → ResWarp at 256²), on characters the model never saw: eye_left = 0
    # changes pixels, the changes sit mostly on the eyes, and on the eye the engine's own render of that pose closes
    # much more than on the other one.
    import cv2

    from keyface.core.synth.render import REST

    size = 256
    pr, img, frame = _shipped_frame(seed, [0.0, 1.0, 0.0, 0.0, 0.0], size)
    changed = np.abs(frame.astype(int) - img.astype(int)).max(axis=2) > 8
    truth = np.abs(pr.renderer.render({**REST, "blink_left": 1.0}).image - pr.rest.image).max(axis=2) > 8 / 255
    eyes = pr.renderer.render(dict(REST), gt=True).masks[0] > 0.2
    grown = cv2.dilate(eyes.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    side = np.mean(np.nonzero(truth)[1]) > size / 2          # which half of the image the closing eye is in
    cols = np.arange(size)[None, :] > size / 2
    left_eye, right_eye = grown & (cols == side), grown & (cols != side)
    assert changed.sum() > 40, changed.sum()
    assert (changed & grown).sum() > 0.5 * changed.sum(), ((changed & grown).sum(), changed.sum())
    assert (changed & left_eye).sum() > 3 * (changed & right_eye).sum()


@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped CPTNet weights not present")
@pytest.mark.parametrize("seed", [987_654, 11])
def test_shipped_model_opens_the_mouth(seed):
    # Through the render path (crop → generator → ResWarp at 256²), on characters the model never saw: mouth = 1
    # changes pixels, mostly around the mouth, and there lands closer to the engine's own render of an open mouth
    # than the unchanged source does.
    import cv2

    from keyface.core.pixels import over_grey
    from keyface.core.rig import character_schema, convert
    from keyface.core.synth.render import MASK_PARTS, REST

    pose = np.array([1.0, 1.0, 1.0, 0.0, 0.0], np.float32)
    pr, img, frame = _shipped_frame(seed, pose)
    truth_img = pr.renderer.render(dict(zip(character_schema().names, convert(pose, "pose5", "character"),
                                            strict=True))).image
    mouth = pr.renderer.render(dict(REST), gt=True).masks[MASK_PARTS.index("mouth")] > 0.2
    truth_changed = np.abs(truth_img - pr.rest.image).max(axis=2) > 8 / 255
    region = cv2.dilate((mouth | truth_changed).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    changed = np.abs(frame.astype(int) - img.astype(int)).max(axis=2) > 8
    assert changed.sum() > 40, changed.sum()
    assert (changed & region).sum() > 0.5 * changed.sum(), ((changed & region).sum(), changed.sum())
    ours = np.abs(over_grey(frame / 255.0) - over_grey(truth_img))[truth_changed].mean()
    identity = np.abs(over_grey(img / 255.0) - over_grey(truth_img))[truth_changed].mean()
    assert ours < 0.85 * identity, (ours, identity)


@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped CPTNet weights not present")
def test_shipped_model_turns_the_head():
    # Through the render path (head crop → generator → ResWarp at 256²), on characters the model never saw: head turns
    # of ±20° in yaw and pitch land much closer to the engine's true render than the unchanged source does.
    from keyface.core.pipeline import FrameJob
    from keyface.core.pixels import over_grey
    from keyface.core.rig import character_schema, convert
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.render import FRAMINGS
    from keyface.core.synth.sample import PairRenderer

    names, size = character_schema().names, 256
    poses = np.array([[1, 1, 0, 0, 1], [1, 1, 0, 0, -1], [1, 1, 0, -1, 0], [1, 1, 0, 1, 0]], np.float32)
    for seed in (987_654, 11):
        pr = PairRenderer(sample_character(seed), (size, size), FRAMINGS["head"])
        img = quantise(pr.rest.image)
        frames = FrameJob.prepare(img, "cptnet-pose5", (0, 0, size, size)).frames(poses)
        for pose, frame in zip(poses, frames, strict=True):
            values = dict(zip(names, convert(pose, "pose5", "character"), strict=True))
            truth = over_grey(pr.renderer.render(values).image)
            ours = np.abs(over_grey(frame / 255.0) - truth).mean()
            identity = np.abs(over_grey(img / 255.0) - truth).mean()
            assert ours < 0.8 * identity, (seed, pose, ours, identity)
