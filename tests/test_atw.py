import json

import numpy as np
import pytest
import torch

from keyface.core.blocks import EncoderDecoder, warp
from keyface.core.cli import main
from keyface.core.errors import KeyfaceError
from keyface.core.losses import gradient_penalty, masked_l1
from keyface.core.methods.atw.conditioning import DIM, driving
from keyface.core.methods.atw.losses import LossWeights, critic_losses, generator_losses
from keyface.core.methods.atw.networks import ATWConfig, Critic, Generator, load_generator, save_generator
from keyface.core.methods.atw.trainer import TrainConfig, Trainer
from keyface.core.pixels import from_net, to_net
from keyface.core.synth.dataset import SynthConfig, write_dataset
from keyface.core.training import load_upgraded, upgraded_config

TINY = ATWConfig(grid=64, base=4, critic_base=4, motion_blocks=1, refine_blocks=1)


def test_warp_follows_the_flow_convention():
    img = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7)
    flow = torch.zeros(1, 2, 5, 7)
    flow[:, 0] = 1.0  # every output pixel reads its right neighbour
    out = warp(img, flow)
    assert torch.allclose(out[0, 0, :, :-1], img[0, 0, :, 1:])
    assert torch.allclose(warp(img, torch.zeros_like(flow)), img)


def test_adain_blocks_carry_a_constant_signal_and_upgrade_older_weights():
    """The driving signal is constant over the image: concatenated before instance-normalised convolutions it reaches
    the interior only through border effects; the AdaIN-conditioned residual blocks carry it everywhere."""
    torch.manual_seed(0)
    old = EncoderDecoder(4, 2, 3, 8, 2, "instance", "relu", adain=False).eval()
    new = EncoderDecoder(4, 2, 3, 8, 2, "instance", "relu").eval()
    load_upgraded(new, old.state_dict())               # AdaIN layers start at zero: the same function
    x, c0, c1 = torch.rand(1, 4, 128, 128) * 2 - 1, torch.zeros(1, 3), torch.ones(1, 3)
    with torch.no_grad():
        assert torch.equal(old(x, c1), new(x, c1))
        for block in new.blocks:                       # as after training: non-zero modulation
            torch.nn.init.normal_(block.film.weight, std=0.3)
        interior = (slice(None), slice(None), slice(32, -32), slice(32, -32))
        effect_old = (old(x, c1) - old(x, c0))[interior].abs().mean()
        effect_new = (new(x, c1) - new(x, c0))[interior].abs().mean()
    assert effect_new > 5 * effect_old                 # measured: 0.21 vs 0.014
    with pytest.raises(KeyfaceError, match="do not fit"):
        load_upgraded(new, {k: v for k, v in old.state_dict().items() if not k.startswith("fuse.")})
    old_cfg = ATWConfig(base=4, adain=False)
    assert upgraded_config(old_cfg, ATWConfig()).adain and not upgraded_config(old_cfg, old_cfg).adain
    assert upgraded_config(ATWConfig(base=4), old_cfg) == ATWConfig(base=4)


def test_shapes_and_gradients():
    g, dr, dw = Generator(TINY), Critic(TINY), Critic(TINY, adversarial=False)
    x = torch.rand(2, 4, 64, 64) * 2 - 1
    c = torch.rand(2, DIM)
    refined, warped, flow = g(x, c)
    assert refined.shape == warped.shape == x.shape and flow.shape == (2, 2, 64, 64)
    assert flow.abs().max() <= TINY.flow_scale and refined.abs().max() <= 1
    score, drv = dr(x)
    assert score.shape[:2] == (2, 1) and drv.shape == (2, DIM) and dw(x).shape == (2, DIM)
    (refined.mean() + flow.mean()).backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in g.motion.parameters())


def test_loss_terms():
    torch.manual_seed(0)
    g, dr, dw = Generator(TINY), Critic(TINY), Critic(TINY, adversarial=False)
    w = LossWeights()
    x = torch.rand(2, 4, 64, 64) * 2 - 1
    c_s, c_t = torch.zeros(2, DIM), torch.rand(2, DIM)
    out = g(x, c_t)
    terms = generator_losses(g, x, c_s, c_t, out, w, target=x, flow_gt=torch.zeros(2, 2, 64, 64),
                             visible=torch.ones(2, 1, 64, 64), dr=dr, dw=dw)
    assert set(terms) == {"ref", "rec", "adv", "drv", "warp", "img", "flow", "wimg", "img_changed", "flow_moving",
                          "total"}
    refined, warped, flow = out
    assert terms["ref"].item() == pytest.approx((warped - refined).abs().mean().item())
    assert terms["flow"].item() == pytest.approx(flow.abs().mean().item(), rel=1e-5)
    expected = sum(getattr(w, k) * terms[k] for k in ("ref", "rec", "adv", "drv", "warp", "img", "flow", "wimg",
                                                       "img_changed", "flow_moving"))
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    # masked terms ignore pixels marked invisible
    vis = torch.zeros(2, 1, 64, 64)
    vis[..., :8, :8] = 1
    t2 = generator_losses(g, x, c_s, c_t, out, w, target=x, flow_gt=flow.detach(), visible=vis)
    assert t2["flow"].item() == pytest.approx(0, abs=1e-6) and "adv" not in t2
    d = critic_losses(dr, dw, x, out[0].detach(), c_s, w)
    assert d["d_drv"].item() == pytest.approx(torch.nn.functional.mse_loss(dr(x)[1], c_s).item(), rel=1e-5)
    assert gradient_penalty(lambda v: dr(v)[0], x, out[0].detach()).item() >= 0
    # the cancelled term judges G(I, c_t) − G(I, c_s) against T − I on the changed pixels
    target = x.clone()
    target[..., :6, :6] = -x[..., :6, :6]
    rest = g(x, c_s)[0]
    wc = LossWeights(img_cancelled=20.0)
    t3 = generator_losses(g, x, c_s, c_t, out, wc, target=target, flow_gt=torch.zeros(2, 2, 64, 64),
                          visible=torch.ones(2, 1, 64, 64), rest=rest)
    changed = (target - x).abs().amax(1, keepdim=True) > 1.5 / 127.5
    expected = ((refined - rest) - (target - x)).abs().mul(changed).flatten(1).sum(1) / (4 * changed.flatten(1).sum(1))
    assert t3["img_cancelled"].item() == pytest.approx(expected.mean().item(), rel=1e-5)
    t4 = generator_losses(g, x, c_s, c_t, out, wc, target=target, flow_gt=torch.zeros(2, 2, 64, 64),
                          visible=torch.ones(2, 1, 64, 64))
    assert "img_cancelled" not in t4
    assert t3["total"].item() == pytest.approx((t4["total"] + 20.0 * t3["img_cancelled"]).item(), rel=1e-5)


def test_image_conversion_round_trip():
    rgba = (np.random.default_rng(0).random((2, 8, 8, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = 255
    back = from_net(to_net(rgba))
    assert np.abs(back * 255 - rgba).max() <= 0.51


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("atwdata")
    write_dataset(root, SynthConfig(characters=6, poses_per_character=4, size=64, seed=3, test_fraction=0.34,
                                    framing="face", poses="expression", project="au17"), workers=1)
    return root


def _cfg(data, **kw):
    return TrainConfig(**{"data": str(data), "batch": 4, "eval_every": 1000, "eval_characters": 2, "model": TINY, **kw})


def test_tiny_overfit_loss_falls(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, steps=60, lr=3e-3)
    tr = Trainer(cfg, tmp_path / "run", device="cpu", log=lambda m: None)
    tr.train_data.rest = tr.train_data.rest[:4]  # one fixed batch
    first = [tr.train_step()["total"] for _ in range(5)]
    for _ in range(50):
        last = tr.train_step()["total"]
    assert last < 0.6 * np.mean(first)


def test_gan_mode_step_runs(tiny_data, tmp_path):
    tr = Trainer(_cfg(tiny_data, steps=1, mode="both", critic_steps=2), tmp_path / "run", device="cpu",
                 log=lambda m: None)
    logs = tr.train_step()
    assert {"d_adv", "d_w", "adv", "drv", "warp", "img"} <= set(logs)


def test_checkpoint_round_trip_and_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    Trainer(_cfg(tiny_data, steps=3), run, device="cpu", log=lambda m: None).fit()
    assert (run / "generator.safetensors").exists()
    meta = json.loads((run / "generator.json").read_text())
    assert meta["steps"] == 3 and set(meta["validation"]) == {"blink", "mouth open", "smile"}
    # resuming continues from step 3 with the same batches as an uninterrupted run
    resumed = Trainer(_cfg(tiny_data, steps=5), run, device="cpu", resume=True, log=lambda m: None)
    assert resumed.step == 3
    resumed.fit()
    straight = Trainer(_cfg(tiny_data, steps=5), tmp_path / "straight", device="cpu", log=lambda m: None)
    straight.fit()
    a = load_generator(run / "generator.safetensors").state_dict()
    b = load_generator(tmp_path / "straight" / "generator.safetensors").state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    with pytest.raises(KeyfaceError, match="already holds a run"):
        Trainer(_cfg(tiny_data, steps=5), run, device="cpu")
    with pytest.raises(KeyfaceError, match="not found"):
        load_generator(tmp_path / "missing.safetensors")
    save_generator(Generator(TINY), tmp_path / "g.safetensors")
    assert load_generator(tmp_path / "g.safetensors").cfg == TINY


def test_driving_vector():
    from keyface.core.rig import character_schema

    names = character_schema().names
    v = np.zeros(len(names))
    v[names.index("mouth_open")] = 1.0
    d = driving(v)
    assert d.shape == (DIM,) and d.max() == pytest.approx(1.0) and d.min() >= 0


def test_masked_l1_per_sample_weighs_each_sample_equally():
    a, b = torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    a[0] = 1.0               # sample 0: error 1 on its 16 masked pixels
    a[1, 0, 0, 0] = 3.0      # sample 1: error 3 on its single masked pixel
    mask = torch.zeros(3, 1, 4, 4)
    mask[0] = 1
    mask[1, 0, 0, 0] = 1     # sample 2: empty mask, left out of the mean
    assert masked_l1(a, b, mask).item() == pytest.approx((16 + 3) / 17)
    assert masked_l1(a, b, mask, per_sample=True).item() == pytest.approx((1 + 3) / 2)
    assert masked_l1(a, b, torch.zeros_like(mask), per_sample=True).item() == 0


def test_focus_fills_batches_with_pairs_of_an_action_unit(tiny_data, tmp_path):
    from keyface.core.errors import KeyfaceError
    from keyface.core.methods.atw.trainer import FOCUS
    from keyface.core.rig import get_schema

    names = list(get_schema("au17").names)
    tr = Trainer(_cfg(tiny_data, focus={"AU25": 0.5, "AU06": 0.25}), tmp_path / "a", device="cpu", log=lambda m: None)
    c = tr.train_data.c_t
    au25, au06 = c[:, names.index("AU25")] >= FOCUS, c[:, names.index("AU06")] >= FOCUS
    assert 0 < au25.sum() < len(c) and 0 < au06.sum() < len(c)   # the tiny corpus has a few of each
    for k in range(10):
        idx = tr.batch_indices(k)
        assert len(idx) == 4 and au25[idx[:2]].all() and au06[idx[2]]
        assert np.array_equal(idx, tr.batch_indices(k))  # seeded
    plain = Trainer(_cfg(tiny_data), tmp_path / "b", device="cpu", log=lambda m: None)
    assert au25[np.concatenate([plain.batch_indices(k) for k in range(10)])].mean() < 0.5
    for focus, message in (({"AU99": 0.5}, "unknown action unit"), ({"AU12": 0.5}, "no training pair has AU12"),
                           ({"AU25": 0.7, "AU06": 0.7}, "more than 1"), ({"AU25": -0.1}, r"in \[0, 1\]")):
        with pytest.raises(KeyfaceError, match=message):
            Trainer(_cfg(tiny_data, focus=focus), tmp_path / "c", device="cpu", log=lambda m: None)


def test_cli_train_atw(tiny_data, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "atw", "--data", str(tiny_data), "--out", str(out), "--steps", "2", "--batch", "2", "--base",
            "4", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    assert "finished 2 steps" in capsys.readouterr().out
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*args[:5], str(tmp_path / "each"), *args[6:], "--changed-per-sample", "--select", "worst",
                 "--cancelled-weight", "20"]) == 0
    config = json.loads((tmp_path / "each" / "config.json").read_text())
    assert config["weights"]["changed_per_sample"] is True and config["select"] == "worst"
    assert config["weights"]["img_cancelled"] == 20
    assert main([*args[:5], str(tmp_path / "focus"), *args[6:], "--focus", "AU25=0.5"]) == 0
    assert json.loads((tmp_path / "focus" / "config.json").read_text())["focus"] == {"AU25": 0.5}
    capsys.readouterr()
    assert main([*args[:5], str(tmp_path / "nofocus"), *args[6:], "--focus", "AU12=0.5"]) == 2
    assert "no training pair has AU12" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*args[:5], str(tmp_path / "badfocus"), *args[6:], "--focus", "AU12"])
    assert exit_.value.code == 2 and "expected NAME=VALUE" in capsys.readouterr().err
    logs = [json.loads(line) for line in (tmp_path / "each" / "log.jsonl").read_text().splitlines()]
    assert all("img_cancelled" in entry for entry in logs if "eval" not in entry)
    assert main([*args[:5], str(tmp_path / "gan"), *args[6:], "--mode", "gan", "--cancelled-weight", "20"]) == 2
    assert "cancelled term" in capsys.readouterr().err
    assert main(["train", "atw", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "no synthetic dataset" in capsys.readouterr().err


def test_validation_characters_best_checkpoint_schedule_and_init(tiny_data, tmp_path):
    from keyface.core.methods.atw.trainer import eval_score
    from keyface.core.synth.dataset import load_manifest
    from keyface.core.training import validation_seeds

    rows = {n: {"psnr_bias_cancelled": 30.0 + g, "psnr_identity": 30.0} for n, g in (("a", 3.0), ("b", -0.5))}
    assert eval_score(rows) == pytest.approx(1.25) and eval_score(rows, "worst") == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="select"):
        eval_score(rows, "best")
    manifest = load_manifest(tiny_data)
    seeds = validation_seeds(manifest, 5)
    used = {int(s) for split in manifest["splits"].values() for s in split}
    assert len(set(seeds)) == 5 and not used & set(seeds) and seeds == validation_seeds(manifest, 5)
    manifest["splits"]["train"].append(seeds[0])            # a seed that is used is never a validation seed
    assert seeds[0] not in validation_seeds(manifest, 5)

    run = tmp_path / "run"
    tr = Trainer(_cfg(tiny_data, steps=4, eval_every=2, lr=1e-3, lr_schedule="cosine"), run, device="cpu",
                 log=lambda m: None)
    assert tr.lr_at(0) == pytest.approx(1e-3) and tr.lr_at(2) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert tr.lr_at(4) == pytest.approx(5e-5)
    tr.fit()
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "eval" in line]
    assert [e["step"] for e in evals] == [2, 4]
    best = max(evals, key=lambda e: e["score"])
    meta = json.loads((run / "best.json").read_text())
    assert meta["steps"] == best["step"] and meta["score"] == pytest.approx(eval_score(best["eval"]))
    assert json.loads((run / "state.json").read_text())["best_score"] == pytest.approx(best["score"])

    started = Trainer(_cfg(tiny_data, steps=1, init=str(run / "generator.safetensors")), tmp_path / "init",
                      device="cpu", log=lambda m: None)
    ref = load_generator(run / "generator.safetensors").state_dict()
    for k, v in started.gen.state_dict().items():
        assert torch.equal(v, ref[k]), k
    with pytest.raises(KeyfaceError, match="lr schedule"):
        Trainer(_cfg(tiny_data, lr_schedule="steps"), tmp_path / "bad", device="cpu")


def test_cli_eval_atw(tiny_data, tmp_path, capsys):
    torch.manual_seed(0)
    save_generator(Generator(TINY), tmp_path / "g.safetensors")
    assert main(["eval", "atw", str(tmp_path / "g.safetensors"), "--data", str(tiny_data), "--characters", "1",
                 "--size", "160", "--json", str(tmp_path / "e.json")]) == 0
    assert "held-out characters" in capsys.readouterr().out
    rows = json.loads((tmp_path / "e.json").read_text())
    assert set(rows) == {"blink", "mouth open", "smile"} and rows["blink"]["psnr_identity"] > 10
