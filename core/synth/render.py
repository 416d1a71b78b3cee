"""The renderer: a character as ~25 painted layers, drawn by inverse mapping at any resolution, with ground truth.

Each layer has a *rest* description (shape as a signed distance, colour, cel shadow, outline, brush/paper texture, all
functions of rest character coordinates) and a *deformation* (the head or body transform of :mod:`.face`, then an
optional local one: an eyelid sliding, an iris moving, the jaw dropping). An output pixel is mapped back through the
deformation to rest coordinates and the layer evaluated there; layers are composited back to front (premultiplied
"over"). Because content lives in rest coordinates, the rest image warped by the ground-truth backward flow reproduces
the posed image wherever the same layer is visible in both.

**Anti-aliasing, resolution independence.** Coverage is the box filter of the pixel footprint: a region of signed
distance d covers clip(½ − d/p, 0, 1) of a pixel of size p (exact for straight edges), a stroke of width w the overlap
of the pixel with the stroke (so a stroke thinner than a pixel fades instead of breaking up). Textures are sums of
sinusoids, each multiplied by sinc(f_x·p)·sinc(f_y·p) — exactly a sinusoid's box-filtered value — and skipped when that
is negligible. A 4K render area-averaged to 256² therefore matches the 256² render.

**Ground truth** (posed→rest): for every posed pixel the top layer (the last one covering it by ≥ ½) gives its rest
position, hence the backward flow in pixels; ``visible`` marks pixels whose top layer is fully opaque there and is also
the fully opaque top layer at the rest position (so disocclusions — a closing lid, the inside of an opening mouth, the
back hair revealed by a head turn — and anti-aliased edges are excluded). Part masks (eyes, brows, mouth) are each
part's visible coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..rig import character_schema
from . import face as fm
from .character import Character

TAU = 2 * math.pi
MASK_PARTS = ("eyes", "brows", "mouth")


@dataclass(frozen=True)
class Placement:
    """Where the head goes: its box centre as fractions of (width, height) and its side as a fraction of the image's
    smaller side. Default: the THA convention (512²: x 192–320, y 64–192)."""

    center: tuple[float, float] = (0.5, 0.25)
    head: float = 0.25

    def unit(self, h: int, w: int) -> float:
        return self.head * min(h, w) / 2  # pixels per character unit

    def origin(self, h: int, w: int) -> tuple[float, float]:
        return self.center[0] * w, self.center[1] * h


FACE_CROP = Placement(center=(0.5, 0.375), head=1.0)  # the face box (2 × 2 units about (0, 0.25)) fills the image
HEAD_CROP = Placement(center=(0.5, 0.45), head=0.5)  # CPTNet's framing: the head with its hair, room to turn
FRAMINGS = {"full": Placement(), "face": FACE_CROP, "head": HEAD_CROP}


# ------------------------------------------------------------------------------------------------ coverage helpers


def area(d, ps):
    """Coverage of the region d < 0 (d: signed distance in units; ps: pixel size in units)."""
    return np.clip(0.5 - d / ps, 0.0, 1.0)


def stroke(d, width, ps):
    """Coverage of a stroke of ``width`` centred on d = 0: overlap of the pixel's footprint with the stroke."""
    half = 0.5 * width
    lo = np.maximum(d - 0.5 * ps, -half)
    hi = np.minimum(d + 0.5 * ps, half)
    return np.clip(hi - lo, 0.0, None) / ps


def ellipse_d(x, y, cx, cy, rx, ry):
    """Approximate signed distance to an ellipse (first order: f / |∇f|)."""
    qx, qy = (x - cx) / rx, (y - cy) / ry
    q = np.sqrt(qx * qx + qy * qy) + 1e-9
    g = np.sqrt((qx / rx) ** 2 + (qy / ry) ** 2) / q + 1e-9
    return (q - 1) / g


def curve_band(x, y, top, bottom, dtop, dbottom):
    """Signed distance to the region top(x) < y < bottom(x), given the curves' values and slopes at x."""
    return np.maximum((top - y) / np.sqrt(1 + dtop ** 2), (y - bottom) / np.sqrt(1 + dbottom ** 2))


def polar_d(x, y, cx, cy, radius):
    """Signed distance to the star-shaped region ρ < radius(φ) about (cx, cy) (first order)."""
    dx, dy = x - cx, y - cy
    rho = np.sqrt(dx * dx + dy * dy) + 1e-9
    phi = np.arctan2(dy, dx)
    r = radius(phi)
    dr = (radius(phi + 1e-3) - radius(phi - 1e-3)) / 2e-3
    return (rho - r) / np.sqrt(1 + (dr / np.maximum(r, 1e-3)) ** 2)


def band_limit(comps, ps):
    """Texture components (fx, fy, phase, amplitude) with each amplitude multiplied by its box-filter response at
    pixel size ``ps``; negligible ones dropped."""
    out = []
    for fx, fy, ph, amp in comps:
        att = amp * float(np.sinc(fx * ps) * np.sinc(fy * ps))
        if abs(att) > 2e-4:
            out.append((np.float32(TAU * fx), np.float32(TAU * fy), np.float32(ph), np.float32(att)))
    return out


def texture(x, y, comps):
    """Band-limited texture Σ a·sin(2π(fx·x + fy·y) + φ) of :func:`band_limit` ed components."""
    out = np.zeros(np.shape(x), np.float32)
    for wx, wy, ph, att in comps:
        out += att * np.sin(wx * x + wy * y + ph)
    return out


def smoothstep(a, b, x):
    t = np.clip((x - a) / (b - a), 0, 1)
    return t * t * (3 - 2 * t)


# ---------------------------------------------------------------------------------------------------------- layers


@dataclass
class Layer:
    name: str
    part: str
    frame: str                # "head" or "body"
    depth: float              # offset from the head surface (parallax); unused for the body
    bounds: tuple             # rest-space box (x0, y0, x1, y1) covering the layer in every pose
    shade: object             # (ctx, xr, yr, xl, yl) -> (rgb (..., 3), alpha (...))
    local: object = None      # (ctx, xl, yl) -> (xr, yr): the local deformation's inverse


@dataclass
class Context:
    char: Character
    pose: fm.Pose
    f: dict                   # feature scalars in this pose
    f0: dict                  # feature scalars at rest (expression 0)
    ps: float                 # pixel size in character units
    tex: list = field(default_factory=list)


def _mix(base, color, amount):
    return base + (color - base) * amount[..., None]


def _paint(ctx, xr, yr, color, d, *, shadow=None, line=1.0, light=0.06, tex=1.0):
    """A painted region: flat colour with a soft light gradient, cel shadow (coverage ``shadow``), an outline along
    d = 0 and the character's brush/paper texture. Returns (rgb, alpha)."""
    st = ctx.char.style
    g = 1 + light * st.get("gradient", 1.0) * (st["light"] * xr - yr) * 0.3
    if tex and st.get("texture_gain", 1.0):
        g = g + tex * st.get("texture_gain", 1.0) * texture(xr, yr, ctx.tex)
    rgb = color[None, None, :] * g[..., None]
    if shadow is not None and st.get("shadow", 1.0):
        k = np.clip(shadow * st.get("shadow", 1.0), 0, 1)
        rgb = rgb * (1 - k[..., None] * (1 - np.array([0.80, 0.74, 0.86], np.float32)))
    a = area(d, ctx.ps)
    if line:
        lw = 0.016 * st["line_width"] * line
        rgb = _mix(rgb, ctx.char.colors["line"], stroke(d + 0.5 * lw, lw, ctx.ps))
    return rgb, a


def _solid(color, shape, alpha):
    return np.broadcast_to(np.asarray(color, np.float32), shape + (3,)), alpha


# ---- hair -------------------------------------------------------------------------------------------------------


def _hair_color(ctx, xr, yr, d, cx=0.0, cy=-0.35, shadow=None):
    st, col = ctx.char.style, ctx.char.colors["hair"]
    rgb, a = _paint(ctx, xr, yr, col, d, shadow=shadow)
    dx, dy = xr - cx, yr - cy
    rho = np.sqrt(dx * dx + dy * dy) + 1e-6
    phi = np.arctan2(dy, dx)
    n = st["strands"]
    ph = phi * n / TAU + 0.35 * np.sin(3 * phi + st["strand_seed"])
    dist = np.abs(ph - np.floor(ph) - 0.5) * TAU * rho / n  # distance to the nearest strand line
    lines = stroke(dist - 0.5 * TAU * rho / n, 0.012, ctx.ps) * smoothstep(0.35, 0.8, rho)
    rgb = _mix(rgb, col * 0.62, lines * 0.8)
    ring = 0.62 + 0.012 * np.sin(phi * n)  # the "angel ring" highlight
    hl = stroke(rho - ring, 0.05, ctx.ps) * smoothstep(-0.2, 0.25, -np.abs(phi + math.pi / 2) + 1.1)
    rgb = _mix(rgb, np.minimum(col * 1.25 + 0.15, 1.0), hl * 0.5)
    return rgb, a


def _hair_back(char):
    st = char.style
    length = {"short": 0.9, "bob": 1.5, "long": st["hair_length"] + 1.0, "twintails": 1.2,
              "ponytail": 1.1}[st["hair"]]
    vol = st["hair_volume"]

    def radius(phi):
        s = np.sin(phi)
        low = np.maximum(s, 0)
        tips = 0.06 * np.abs(np.sin(phi * 9 + 1.3)) * low
        return vol * 1.02 + (length - vol) * low ** 3 - tips

    def shade(ctx, xr, yr, xl, yl):
        d = polar_d(xr, yr, 0, -0.1, radius)
        if st["hair"] == "twintails":
            for s in (-1, 1):
                d = np.minimum(d, ellipse_d(xr, yr, s * 1.25, 1.0, 0.35, 1.5 + 0.3 * st["hair_length"] / 4))
        if st["hair"] == "ponytail":
            d = np.minimum(d, ellipse_d(xr, yr, 0.0, 1.3, 0.45, 1.6))
        rgb, a = _hair_color(ctx, xr, yr, d)
        return rgb * 0.82, a  # the back hair sits in shadow

    low = max(length, 3.2 if st["hair"] == "twintails" else 3.0 if st["hair"] == "ponytail" else length) + 0.2
    return Layer("hair_back", "hair", "head", -0.5, (-1.7, -1.4, 1.7, low), shade)


def _bangs(char):
    st = char.style
    vol, n, sharp, length = st["hair_volume"], st["bangs"], st["bang_sharp"], st["bang_length"]

    def cap_radius(phi):
        return vol * (0.98 + 0.04 * np.cos(phi * 2))

    def fringe(x):
        """Lower edge of the fringe: strand tips hanging over the forehead."""
        t = (x / 0.9 + 1) * n / 2 + st["bang_phase"]
        tri = np.abs(t - np.floor(t) - 0.5) * 2  # 1 at a tip, 0 between
        tip = tri ** (1 + 2 * sharp)
        side = np.clip(np.abs(x) - 0.55, 0, None) * 1.6
        return -0.28 + length + 0.16 * tip + side

    def shade(ctx, xr, yr, xl, yl):
        d_cap = polar_d(xr, yr, 0, -0.12, cap_radius)
        eps = 1e-3
        yb = fringe(xr)
        slope = (fringe(xr + eps) - fringe(xr - eps)) / (2 * eps)
        d = np.maximum(d_cap, (yr - yb) / np.sqrt(1 + slope ** 2))
        side = (np.abs(xr) > 0.7) & (yr > -0.2)
        d = np.where(side, np.maximum(d_cap, 0.68 + 0.05 * yr - np.abs(xr)), d)  # temples: hair outside the face
        if st["ahoge"]:
            d = np.minimum(d, np.maximum(ellipse_d(xr, yr, 0.15, -1.2, 0.09, 0.3), -ellipse_d(xr, yr, 0.28, -1.25,
                                                                                          0.09, 0.3)))
        shadow = smoothstep(-0.1, 0.1, yr - yb + 0.12)
        return _hair_color(ctx, xr, yr, d, shadow=shadow)

    return Layer("bangs", "hair", "head", 0.12, (-1.6, -1.7, 1.6, 0.6), shade)


def _side_locks(char):
    st = char.style
    length = 0.9 + min(st["hair_length"], 3.0) * 0.25

    def shade(ctx, xr, yr, xl, yl):
        ds = []
        for s in (-1, 1):
            cx = s * (0.86 + 0.1 * (st["hair_volume"] - 1))
            w = 0.13 * (1 - smoothstep(-0.2, length, yr)) + 0.015
            center = cx + s * 0.06 * np.sin(yr * 2.0)
            ds.append(np.maximum(np.abs(xr - center) - w, np.maximum(-0.35 - yr, yr - length)))
        d = np.minimum(*ds)
        return _hair_color(ctx, xr, yr, d)

    return Layer("side_locks", "hair", "head", 0.1, (-1.3, -0.5, 1.3, length + 0.1), shade)


# ---- head -------------------------------------------------------------------------------------------------------


def _jaw_inverse(ctx, xl, yl):
    m = ctx.f["mouth"]
    jaw = m["jaw"]
    if not np.any(jaw):
        return xl, yl
    y0 = ctx.f0["mouth"]["y"] + 0.05
    return xl, fm._unstretch(yl, y0, ctx.f0["face"]["chin"], jaw)


def _face(char):
    def shade(ctx, xr, yr, xl, yl):
        f0 = ctx.f0["face"]
        d = polar_d(xr, yr, 0, fm.FACE_CENTER_Y, lambda p: fm.face_radius(p, f0["width"], f0["chin"]))
        # cel shadows: on the cheek away from the light, and under the fringe
        side = area(-(xr * -np.sign(char.style["light"] + 1e-6) - 0.55 + 0.2 * yr), ctx.ps)
        under_fringe = area(yr - (-0.2 + char.style["bang_length"] + 0.12), ctx.ps * 3) * 0.6
        shadow = np.maximum(side * 0.7, under_fringe)
        rgb, a = _paint(ctx, xr, yr, char.colors["skin"], d, shadow=shadow, light=0.04)
        blush = char.style["blush"]
        if blush > 0:
            for s in (-1, 1):
                b = np.clip(1 - ((xr - s * 0.45) / 0.17) ** 2 - ((yr - 0.48) / 0.07) ** 2, 0, 1)
                rgb = _mix(rgb, char.colors["blush"], b * blush)
                hatch = stroke(np.abs(((xr - s * 0.45) * 30 + yr * 12) % 1.0 - 0.5) / 30, 0.006, ctx.ps)
                rgb = _mix(rgb, char.colors["blush"] * 0.85, hatch * b * blush)
        return rgb, a

    return Layer("face", "face", "head", 0.0, (-1.1, -1.05, 1.1, 1.35), shade, _jaw_inverse)


def _ears(char):
    def shade(ctx, xr, yr, xl, yl):
        w = ctx.f0["face"]["width"]
        d = np.minimum(ellipse_d(xr, yr, -w - 0.02, 0.18, 0.12, 0.2), ellipse_d(xr, yr, w + 0.02, 0.18, 0.12, 0.2))
        inner = area(np.minimum(ellipse_d(xr, yr, -w - 0.03, 0.18, 0.05, 0.11),
                                ellipse_d(xr, yr, w + 0.03, 0.18, 0.05, 0.11)), ctx.ps)
        return _paint(ctx, xr, yr, char.colors["skin"], d, shadow=inner * 0.8)

    return Layer("ears", "face", "head", -0.32, (-1.3, -0.15, 1.3, 0.5), shade)


def _nose(char):
    def shade(ctx, xr, yr, xl, yl):
        n = ctx.f0["nose"]
        tip = area(ellipse_d(xr, yr, n["x"] + 0.01, n["y"], 0.018, 0.012), ctx.ps) * 0.9
        ridge = area(ellipse_d(xr, yr, n["x"] + 0.035, n["y"] - 0.05, 0.02, 0.07), ctx.ps) * 0.35
        return _solid(char.colors["skin"] * 0.8, xr.shape, np.maximum(tip, ridge))

    return Layer("nose", "face", "head", 0.2, (-0.15, 0.2, 0.15, 0.55), shade)


# ---- eyes -------------------------------------------------------------------------------------------------------


def _lids(e, u):
    """Upper and lower lid offsets (v, y down) at u ∈ [-1, 1] along the eye, and the opening's half-width."""
    bump = np.clip(1 - u * u, 0, None)
    up = -e["up"] * bump ** 0.6 - e["arch"] * bump
    lo = e["lo"] * bump ** 0.9
    return up, lo


def _eye_frame(e, x, y, side):
    """Eye-local coordinates: u ∈ [-1, 1] outer → inner along the eye, v vertical offset (tilt removed)."""
    s = 1 if side == "left" else -1
    u = (x - e["x"]) / e["w"] * s  # +1 = outer corner
    v = y - e["y"] + e["tilt"] * 0.205 * u
    return u, v


def _eye_opening(ctx, xl, yl, side):
    """Signed distance (approx.) to the posed eye opening, evaluated in the head's rest frame."""
    e = ctx.f[f"eye_{side}"]
    u, v = _eye_frame(e, xl, yl, side)
    up, lo = _lids(e, np.clip(u, -1, 1))
    up = np.minimum(up, lo)
    d = curve_band(u, v, up, lo, 0, 0)
    return np.maximum(d, (np.abs(u) - 1) * e["w"])


def _sclera(char, side):
    def shade(ctx, xr, yr, xl, yl):
        d = _eye_opening(ctx, xl, yl, side)
        e = ctx.f0[f"eye_{side}"]
        shade_top = smoothstep(0.0, 0.08, -(yr - e["y"] + e["up"] * 0.6))
        rgb = np.broadcast_to(np.array([0.97, 0.97, 1.0], np.float32), xr.shape + (3,))
        rgb = _mix(rgb, np.array([0.78, 0.8, 0.92], np.float32), shade_top * 0.8)
        return rgb, area(d, ctx.ps)

    return Layer(f"sclera_{side}", "eyes", "head", 0.02, _eye_bounds(side), shade)


def _iris_inverse(side):
    def inverse(ctx, xl, yl):
        e, e0 = ctx.f[f"eye_{side}"], ctx.f0[f"eye_{side}"]
        k = e0["iris_r"] / e["iris_r"]
        return e0["iris_x"] + (xl - e["iris_x"]) * k, e0["iris_y"] + (yl - e["iris_y"]) * k
    return inverse


def _iris(char, side):
    def shade(ctx, xr, yr, xl, yl):
        e0 = ctx.f0[f"eye_{side}"]
        cx, cy, r = e0["iris_x"], e0["iris_y"], e0["iris_r"]
        col = char.colors[f"eye_{side}"]
        d = ellipse_d(xr, yr, cx, cy, r * 0.82, r)
        t = np.clip((yr - (cy - r)) / (2 * r), 0, 1)
        rgb = col[None, None, :] * (0.45 + 0.75 * t[..., None])
        rgb = _mix(rgb, col * 0.25, area(ellipse_d(xr, yr, cx, cy + 0.1 * r, 0.36 * r, 0.45 * r), ctx.ps))
        rays = 0.5 + 0.5 * np.sin(np.arctan2(yr - cy, xr - cx) * 18)
        rgb = rgb * (1 + 0.12 * (rays[..., None] - 0.5) * np.clip(t, 0.3, 1)[..., None])
        rgb = _mix(rgb, col * 0.3, stroke(d + 0.012, 0.024, ctx.ps))
        hl1 = area(ellipse_d(xr, yr, cx - 0.38 * r, cy - 0.42 * r, 0.22 * r, 0.28 * r), ctx.ps)
        hl2 = area(ellipse_d(xr, yr, cx + 0.35 * r, cy + 0.45 * r, 0.1 * r, 0.08 * r), ctx.ps)
        rgb = _mix(rgb, np.ones(3, np.float32), np.maximum(hl1, hl2 * 0.85))
        a = area(d, ctx.ps) * area(_eye_opening(ctx, xl, yl, side), ctx.ps)
        return rgb, a

    return Layer(f"iris_{side}", "eyes", "head", 0.03, _eye_bounds(side), shade, _iris_inverse(side))


def _eye_bounds(side):
    s = 1 if side == "left" else -1
    x0, x1 = sorted((s * 0.08, s * 0.72))
    return (x0, -0.15, x1, 0.5)


def _lid_inverse(side, which):
    def inverse(ctx, xl, yl):
        e, e0 = ctx.f[f"eye_{side}"], ctx.f0[f"eye_{side}"]
        u, _ = _eye_frame(e, xl, yl, side)
        uc = np.clip(u, -1, 1)
        up, lo = _lids(e, uc)
        up0, lo0 = _lids(e0, uc)
        shift = (np.minimum(up, lo) - up0) if which == "upper" else (lo - lo0)
        return xl, yl - shift
    return inverse


def _upper_lid(char, side):
    st = char.style

    def shade(ctx, xr, yr, xl, yl):
        e0 = ctx.f0[f"eye_{side}"]
        u, v = _eye_frame(e0, xr, yr, side)
        uc = np.clip(u, -1.15, 1.15)
        up, _ = _lids(e0, np.clip(uc, -1, 1))
        thick = 0.028 + 0.03 * np.clip(uc, 0, 1) ** 2 * st["lashes"]
        d = v - (up - 0.2 * thick)
        cov = stroke(d, thick, ctx.ps) * area((np.abs(u) - 1.12) * e0["w"], ctx.ps)
        # lashes: a few flicks at the outer corner
        flick = np.maximum(0, 1 - np.abs((u - 1.05) / 0.12)) * area(-(v - up + 0.04 + 0.08 * (u - 0.9)), ctx.ps)
        flick = flick * area(up - v, ctx.ps) * st["lashes"]
        shadow = stroke(d - thick * 0.5 - 0.025, 0.05, ctx.ps) * area((np.abs(u) - 1) * e0["w"], ctx.ps) * 0.25
        shadow = shadow * area(_eye_opening(ctx, xl, yl, side), ctx.ps)
        cov = np.maximum(cov, np.clip(flick, 0, 1))
        rgb = np.broadcast_to(char.colors["line"] * 0.8, xr.shape + (3,))
        a = np.maximum(cov, shadow)
        rgb = _mix(np.broadcast_to(np.array([0.35, 0.3, 0.45], np.float32), xr.shape + (3,)), rgb,
                   np.where(a > 0, cov / np.maximum(a, 1e-6), 0))
        return rgb, a

    return Layer(f"upper_lid_{side}", "eyes", "head", 0.04, _eye_bounds(side), shade, _lid_inverse(side, "upper"))


def _lower_lid(char, side):
    def shade(ctx, xr, yr, xl, yl):
        e0 = ctx.f0[f"eye_{side}"]
        u, v = _eye_frame(e0, xr, yr, side)
        _, lo = _lids(e0, np.clip(u, -1, 1))
        cov = stroke(v - lo - 0.006, 0.011, ctx.ps) * area(-(u - 0.95) * e0["w"], ctx.ps) * area(
            -(u + 0.1) * -e0["w"], ctx.ps)
        return _solid(char.colors["line"] * 0.9, xr.shape, cov * 0.85)

    return Layer(f"lower_lid_{side}", "eyes", "head", 0.04, _eye_bounds(side), shade, _lid_inverse(side, "lower"))


def _brow(char, side):
    def frame(b, x, y):
        s = b["side"]
        u = (x - b["x"]) / b["w"] * s  # +1 outer end
        return u, y - b["y"]

    def inverse(ctx, xl, yl):
        b, b0 = ctx.f[f"brow_{side}"], ctx.f0[f"brow_{side}"]
        # rotate about the brow centre by the angle change (inner end up for > 0), then shift
        a = -(b["angle"] - b0["angle"]) * b["side"]
        dx, dy = xl - b["x"], yl - b["y"]
        c, s = math.cos(a), math.sin(a)
        return b0["x"] + c * dx + s * dy, b0["y"] - s * dx + c * dy

    def shade(ctx, xr, yr, xl, yl):
        b0 = ctx.f0[f"brow_{side}"]
        u, v = frame(b0, xr, yr)
        center = -0.045 * (1 - np.clip(u, -1, 1) ** 2) - b0["angle"] * 0.19 * u * -1
        thick = 0.048 * (1 - 0.55 * np.clip((u + 1) / 2, 0, 1))
        d = np.maximum(np.abs(v - center) - thick / 2, (np.abs(u) - 1) * b0["w"])
        return _solid(char.colors["hair"] * 0.55, xr.shape, area(d, ctx.ps))

    s = 1 if side == "left" else -1
    x0, x1 = sorted((s * 0.05, s * 0.75))
    return Layer(f"brow_{side}", "brows", "head", 0.05, (x0, -0.5, x1, 0.12), shade, inverse)


# ---- mouth ------------------------------------------------------------------------------------------------------


def _mouth_curves(m, u):
    """Upper and lower lip curves (y offsets from the mouth centre) at u = (x − centre)/half-width."""
    uc = np.clip(u, -1, 1)
    bump = 1 - uc * uc
    corner = m["corner"] * uc * uc
    return corner - m["up"] * bump ** 0.8, corner + m["lo"] * bump ** 0.7


def _mouth_opening(ctx, xl, yl):
    m = ctx.f["mouth"]
    u = (xl - m["x"]) / m["w"]
    up, lo = _mouth_curves(m, u)
    d = curve_band(u, yl - m["y"], up, lo, 0, 0)
    return np.maximum(d, (np.abs(u) - 1) * m["w"]), u


def _mouth_inner(char):
    def shade(ctx, xr, yr, xl, yl):
        d, _ = _mouth_opening(ctx, xl, yl)
        m0 = ctx.f0["mouth"]
        rgb = np.broadcast_to(char.colors["mouth"] * 0.55, xr.shape + (3,))
        rgb = _mix(rgb, char.colors["mouth"] * 0.35, smoothstep(0.0, 0.08, yr - m0["y"]))
        return rgb, area(d, ctx.ps)

    return Layer("mouth_inner", "mouth", "head", 0.04, (-0.4, 0.3, 0.4, 1.05), shade)


def _teeth(char):
    def inverse(ctx, xl, yl):
        return xl, yl + ctx.f["mouth"]["up"]  # the teeth ride with the upper lip's centre

    def shade(ctx, xr, yr, xl, yl):
        d, _ = _mouth_opening(ctx, xl, yl)
        m0 = ctx.f0["mouth"]
        band = area(yr - (m0["y"] + 0.035), ctx.ps)
        return _solid(np.array([0.98, 0.97, 0.96], np.float32), xr.shape, band * area(d, ctx.ps))

    return Layer("teeth", "mouth", "head", 0.05, (-0.4, 0.3, 0.4, 1.05), shade, inverse)


def _tongue(char):
    def inverse(ctx, xl, yl):
        m = ctx.f["mouth"]
        return xl, yl - m["lo"] * 0.85

    def shade(ctx, xr, yr, xl, yl):
        d, _ = _mouth_opening(ctx, xl, yl)
        m0 = ctx.f0["mouth"]
        t = ellipse_d(xr, yr, m0["x"], m0["y"] + 0.02, 0.09, 0.05)
        rgb = np.broadcast_to(np.clip(char.colors["mouth"] * 1.25 + 0.1, 0, 1), xr.shape + (3,))
        return rgb, area(t, ctx.ps) * area(d, ctx.ps)

    return Layer("tongue", "mouth", "head", 0.05, (-0.4, 0.3, 0.4, 1.05), shade, inverse)


def _lip_line(char):
    def inverse(ctx, xl, yl):
        m, m0 = ctx.f["mouth"], ctx.f0["mouth"]
        u = (xl - m["x"]) / m["w"]
        up, lo = _mouth_curves(m, u)
        up0, lo0 = _mouth_curves(m0, u)
        mid = m["y"] + 0.5 * (up + lo)
        shift = np.where(yl < mid, up - up0, lo - lo0)
        return m0["x"] + u * m0["w"], yl - shift

    def shade(ctx, xr, yr, xl, yl):
        d, u = _mouth_opening(ctx, xl, yl)
        w = 0.014 * char.style["line_width"]
        cov = stroke(d, w, ctx.ps) * area((np.abs(u) - 1) * ctx.f["mouth"]["w"] - 0.004, ctx.ps)
        return _solid(char.colors["line"] * 0.9, xr.shape, cov * 0.95)

    return Layer("lip_line", "mouth", "head", 0.05, (-0.4, 0.3, 0.4, 1.05), shade, inverse)


# ---- body -------------------------------------------------------------------------------------------------------


def _neck(char):
    def shade(ctx, xr, yr, xl, yl):
        w = 0.2 + 0.05 * ctx.f0["face"]["width"]
        flare = np.clip(yr - 1.2, 0, None) ** 2 * 1.2
        d_side = np.abs(xr) - w - flare
        d = np.maximum(d_side, np.maximum(0.55 - yr, yr - 2.2))
        shadow = area(yr - 1.05 - 0.15 * np.abs(xr), ctx.ps * 2)
        rgb, _ = _paint(ctx, xr, yr, char.colors["skin"], d_side, shadow=shadow * 0.9)  # outline the sides only
        return rgb, area(d, ctx.ps) * smoothstep(0.55, 0.85, yr)  # the top fades out under the jaw

    return Layer("neck", "body", "body", 0.0, (-0.9, 0.5, 0.9, 2.3), shade)


def _torso_d(char, xr, yr, grow=0.0):
    sw = char.style["shoulders"] + grow
    top = 1.55 + 0.45 * (np.abs(xr) / sw) ** 2.2 - grow
    side = sw + 0.12 * (yr - 2.0)
    return np.maximum(top - yr, np.abs(xr) - side) * 0.9


def _torso(char):
    def shade(ctx, xr, yr, xl, yl):
        return _paint(ctx, xr, yr, char.colors["skin"], _torso_d(char, xr, yr))

    return Layer("torso", "body", "body", 0.0, (-2.4, 1.3, 2.4, 7.5), shade)


def _clothes(char):
    st = char.style

    def shade(ctx, xr, yr, xl, yl):
        d = _torso_d(char, xr, yr, 0.03)
        if st["neckline"] == "vee":
            neck = 1.65 + 0.55 - 1.6 * np.abs(xr)
        elif st["neckline"] == "round":
            neck = 1.65 + 0.3 * np.sqrt(np.clip(1 - (xr / 0.45) ** 2, 0, 1))
        else:  # sailor: a wide collar
            neck = 1.65 + 0.45 - 1.0 * np.abs(xr)
        d = np.maximum(d, neck - yr)
        folds = stroke(np.abs(((xr * 1.3 + 0.15 * np.sin(yr * 3)) % 0.9) - 0.45) - 0.4, 0.012, ctx.ps)
        folds = folds * smoothstep(2.4, 3.2, yr)
        shadow = np.maximum(area(-(np.abs(xr) - (st["shoulders"] - 0.25 + 0.12 * (yr - 2.0))), ctx.ps * 2) * 0.7,
                            area(yr - 2.15, ctx.ps) * area(neck + 0.18 - yr, ctx.ps) * 0.8)
        rgb, a = _paint(ctx, xr, yr, char.colors["cloth"], d, shadow=shadow)
        rgb = _mix(rgb, char.colors["cloth"] * 0.6, folds)
        if st["neckline"] == "sailor":
            collar = area(np.maximum(np.abs(yr - neck - 0.14) - 0.14, np.abs(xr) - 1.1), ctx.ps)
            rgb = _mix(rgb, char.colors["cloth2"], collar)
            rgb = _mix(rgb, char.colors["accent"], stroke(yr - neck - 0.24, 0.03, ctx.ps) * collar)
        return rgb, a

    return Layer("clothes", "body", "body", 0.0, (-2.5, 1.3, 2.5, 7.5), shade)


def _chest_ribbon(char):
    def shade(ctx, xr, yr, xl, yl):
        y0 = 2.15
        wing = lambda s: ellipse_d(xr, yr, s * 0.2, y0, 0.2, 0.11)  # noqa: E731
        d = np.minimum(np.minimum(wing(-1), wing(1)), ellipse_d(xr, yr, 0, y0, 0.06, 0.07))
        tails = np.maximum(np.abs(np.abs(xr) - 0.1 - 0.25 * (yr - y0)) - 0.06, np.maximum(y0 - yr, yr - y0 - 0.45))
        d = np.minimum(d, tails)
        return _paint(ctx, xr, yr, char.colors["accent"], d, light=0.1)

    return Layer("chest_ribbon", "accessory", "body", 0.0, (-0.6, 1.9, 0.6, 2.8), shade)


# ---- accessories ------------------------------------------------------------------------------------------------


def _hair_ribbon(char):
    def shade(ctx, xr, yr, xl, yl):
        cx, cy = 0.78, -0.72
        d = np.minimum(ellipse_d(xr, yr, cx - 0.13, cy - 0.05, 0.14, 0.09), ellipse_d(xr, yr, cx + 0.13, cy + 0.05,
                                                                                       0.14, 0.09))
        d = np.minimum(d, ellipse_d(xr, yr, cx, cy, 0.05, 0.055))
        return _paint(ctx, xr, yr, char.colors["accent"], d, light=0.1)

    return Layer("hair_ribbon", "accessory", "head", 0.2, (0.5, -0.95, 1.05, -0.5), shade)


def _hairpin(char):
    def shade(ctx, xr, yr, xl, yl):
        cx, cy = -0.62, -0.5
        a, b = (xr - cx) * 0.8 + (yr - cy) * 0.6, -(xr - cx) * 0.6 + (yr - cy) * 0.8
        d = np.maximum(np.abs(a) - 0.16, np.abs(b) - 0.025)
        d2 = np.maximum(np.abs(a - 0.04) - 0.16, np.abs(b + 0.06) - 0.025)
        return _paint(ctx, xr, yr, np.clip(char.colors["accent"] * 0.5 + 0.45, 0, 1), np.minimum(d, d2), light=0.2)

    return Layer("hairpin", "accessory", "head", 0.2, (-0.9, -0.8, -0.35, -0.2), shade)


def _glasses(char):
    def shade(ctx, xr, yr, xl, yl):
        ds = []
        for side in ("left", "right"):
            e = ctx.f0[f"eye_{side}"]
            qx, qy = (xr - e["x"]) / 0.27, (yr - e["y"] - 0.02) / 0.19
            ds.append((np.maximum(np.abs(qx), np.abs(qy)) ** 1 - 1) * 0.19)
        d = np.minimum(*ds)
        rim = stroke(d, 0.02, ctx.ps)
        bridge = stroke(yr - 0.16, 0.018, ctx.ps) * area(np.abs(xr) - 0.12, ctx.ps)
        glass = area(d, ctx.ps) * 0.12
        a = np.maximum(np.maximum(rim, bridge), glass)
        rgb = _mix(np.broadcast_to(np.array([0.85, 0.92, 1.0], np.float32), xr.shape + (3,)),
                   char.colors["line"], np.where(a > 0, np.maximum(rim, bridge) / np.maximum(a, 1e-6), 0))
        return rgb, a

    return Layer("glasses", "accessory", "head", 0.35, (-0.75, -0.1, 0.75, 0.5), shade)


def build_layers(char: Character) -> list[Layer]:
    """The character's layers, back to front."""
    st = char.style
    layers = [_hair_back(char), _neck(char), _torso(char), _clothes(char)]
    if st["ribbon"]:
        layers.append(_chest_ribbon(char))
    layers += [_ears(char), _face(char), _nose(char), _mouth_inner(char), _teeth(char), _tongue(char),
               _lip_line(char)]
    for side in ("right", "left"):
        layers += [_sclera(char, side), _iris(char, side), _lower_lid(char, side), _upper_lid(char, side)]
    if st["side_locks"]:
        layers.append(_side_locks(char))
    layers.append(_bangs(char))
    layers += [_brow(char, "right"), _brow(char, "left")]  # drawn over the fringe, as anime does
    if st["hairpin"]:
        layers.append(_hairpin(char))
    if st["hair"] in ("twintails", "ponytail") or st["ribbon"]:
        layers.append(_hair_ribbon(char))
    if st["glasses"]:
        layers.append(_glasses(char))
    return layers


# ---------------------------------------------------------------------------------------------------------- render


def texture_components(char: Character) -> list[tuple]:
    """Paper grain (fine, isotropic) and brush streaks (coarser, along one direction) for this character."""
    rng = np.random.default_rng([char.seed, 0x7E7])
    comps = []
    for _ in range(6):  # paper grain: 40–140 cycles per unit (a few pixels at 4K), random directions
        f, a = rng.uniform(40, 140), rng.uniform(0, math.pi)
        comps.append((f * math.cos(a), f * math.sin(a), rng.uniform(0, TAU), 0.012))
    a0 = rng.uniform(0, math.pi)
    for _ in range(4):  # brush streaks
        f, a = rng.uniform(8, 30), a0 + rng.normal(0, 0.15)
        comps.append((f * math.cos(a), f * math.sin(a), rng.uniform(0, TAU), 0.005))
    return comps


REST = {n: 0.0 for n in character_schema().names}


@dataclass
class Rendered:
    image: np.ndarray                 # (H, W, 4) float32, straight alpha, sRGB in [0, 1]
    label: np.ndarray | None = None   # (H, W) int16: top layer index (-1: background)
    top_alpha: np.ndarray | None = None
    rest_xy: np.ndarray | None = None  # (H, W, 2) rest character coordinates of the top layer
    masks: np.ndarray | None = None   # (len(MASK_PARTS), H, W) visible coverage
    layers: list = field(default_factory=list)


class Renderer:
    """Renders one character at one size; reusable across poses."""

    STRIP = 1 << 18  # pixels per evaluation block (bounds temporaries at 4K)

    def __init__(self, char: Character, size: tuple[int, int], placement: Placement | None = None):
        self.char = char
        self.h, self.w = int(size[0]), int(size[1])
        self.placement = placement or Placement()
        self.unit = self.placement.unit(self.h, self.w)
        self.ox, self.oy = self.placement.origin(self.h, self.w)
        self.layers = build_layers(char)
        self.tex = band_limit(texture_components(char), 1.0 / self.unit)
        self.f0 = fm.features(char.alpha, REST)

    def to_pixels(self, x, y):
        return x * self.unit + self.ox - 0.5, y * self.unit + self.oy - 0.5

    def to_units(self, px, py):
        return (px + 0.5 - self.ox) / self.unit, (py + 0.5 - self.oy) / self.unit

    def _posed_box(self, layer: Layer, pose: fm.Pose):
        x0, y0, x1, y1 = layer.bounds
        xm, ym = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        gx = np.array([x0, xm, x1, x0, x1, x0, xm, x1])
        gy = np.array([y0, y0, y0, ym, ym, y1, y1, y1])
        if layer.frame == "body":
            px, py = pose.body_forward(gx, gy)
        else:
            px, py = pose.head_forward(gx, gy, fm.head_depth(gx, gy) + layer.depth)
        px, py = self.to_pixels(px, py)
        m = 0.25 * self.unit + 2  # margin: local deformations and the paraboloid's bulge
        c0, c1 = int(max(0, math.floor(px.min() - m))), int(min(self.w, math.ceil(px.max() + m)))
        r0, r1 = int(max(0, math.floor(py.min() - m))), int(min(self.h, math.ceil(py.max() + m)))
        return r0, r1, c0, c1

    def render(self, values: dict | None = None, gt: bool = False) -> Rendered:
        values = {**REST, **(values or {})}
        pose = fm.Pose(values)
        ctx = Context(self.char, pose, fm.features(self.char.alpha, values), self.f0, 1.0 / self.unit, self.tex)
        h, w = self.h, self.w
        rgb = np.zeros((h, w, 3), np.float32)
        alpha = np.zeros((h, w), np.float32)
        out = Rendered(rgb, layers=[layer.name for layer in self.layers])
        if gt:
            out.label = np.full((h, w), -1, np.int16)
            out.top_alpha = np.zeros((h, w), np.float32)
            out.rest_xy = np.zeros((h, w, 2), np.float32)
            out.masks = np.zeros((len(MASK_PARTS), h, w), np.float32)
        for li, layer in enumerate(self.layers):
            r0, r1, c0, c1 = self._posed_box(layer, pose)
            if r1 <= r0 or c1 <= c0:
                continue
            rows = max(1, self.STRIP // (c1 - c0))
            for ra in range(r0, r1, rows):
                rb = min(r1, ra + rows)
                px, py = np.meshgrid(np.arange(c0, c1, dtype=np.float32), np.arange(ra, rb, dtype=np.float32))
                x, y = self.to_units(px, py)
                if layer.frame == "body":
                    xl, yl = pose.body_inverse(x, y)
                else:
                    xl, yl = pose.head_inverse(x, y, layer.depth)
                xr, yr = layer.local(ctx, xl, yl) if layer.local else (xl, yl)
                col, a = layer.shade(ctx, xr, yr, xl, yl)
                a = np.asarray(a, np.float32)
                if not a.any():
                    continue
                sl = (slice(ra, rb), slice(c0, c1))
                a3 = a[..., None]
                rgb[sl] = rgb[sl] * (1 - a3) + np.asarray(col, np.float32) * a3
                alpha[sl] = alpha[sl] * (1 - a) + a
                if gt:
                    top = a >= 0.5
                    out.label[sl][top] = li
                    out.top_alpha[sl] = np.where(top, a, out.top_alpha[sl] * (1 - a))
                    out.rest_xy[sl][top] = np.stack([xr, yr], axis=-1)[top]
                    out.masks[(slice(None),) + sl] *= (1 - a)[None]
                    if layer.part in MASK_PARTS:
                        out.masks[(MASK_PARTS.index(layer.part),) + sl] += a
        safe = alpha > 1e-6
        rgb[safe] /= alpha[safe][:, None]
        out.image = np.concatenate([np.clip(rgb, 0, 1), np.clip(alpha, 0, 1)[..., None]], axis=2)
        return out
