"""ResWarp (seed 004 §3.1, §3.4): lift a generator's low-resolution result to the document's full resolution.

The full-resolution **box** (the face crop the generator saw, resized to its grid) is decomposed into a low-resolution
image plus high-frequency residuals. Given the generator's low-res result ``O`` and its motion field, the residuals are
warped by the up-sampled field and added to the up-sampled result:

* ``vanilla``:     O^h = up(O) + warp(R, up(F)),          R = I - up(down(I))
* ``multiscale``:  O_n = O;  O_k = up(O_{k+1}) + warp(R_k, up(F))  for k = n-1 … 0,   R_k = I_k - up(I_{k+1}),
  with I_0 the box, I_{k+1} = down(I_k) halving each level until the next halving would go below the grid, and a last
  step to the grid itself.

**Flow convention** (one for all of keyface): a *backward* flow in low-res pixel units, float32 ``(h, w, 2)``: output
pixel (x, y) takes its content from input position (x + flow[y, x, 0], y + flow[y, x, 1]). At a finer level the field
is bilinearly up-sampled and multiplied by the level's size over the grid's, per axis.

**Geometry, any size.** Every resampling uses one pixel-centre convention (pixel i covers [i, i+1), its centre i + ½):
down-sampling is area averaging (OpenCV INTER_AREA: an exact 2×2 mean for even sizes, fractional-area weights for
odd sizes or non-integer ratios), up-sampling is bilinear with half-pixel centres (output x samples input
(x + ½)·w/W − ½, clamped at the border). Odd sizes therefore round the level size (e.g. 375 → 188) without shifting
the image by half a pixel, and any aspect ratio maps to any grid (scale per axis). All work is in float32 and sampling
positions are exact floats (OpenCV's remap interpolates float images at float positions exactly), so the CPU (OpenCV)
and torch backends compute the same values up to float rounding.

**Residual warp interpolation**: bicubic (``interp="cubic"``, a = −0.75, the default) or bilinear (``"linear"``).
Chosen by measurement: on the analytic warps of ``keyface.core.analytic`` at 1920×1080, bicubic gained 1.5–3 dB PSNR
over bilinear for both modes at about the same speed (``keyface bench reswarp`` prints the table).

**RGBA**: colour is lifted premultiplied (RGB·α, α) and divided back at the end, so transparent edges get no dark or
light fringe; where the result is fully transparent the source colour is kept. When the generator returns no alpha,
the low-res alpha is the source's down-sampled alpha warped by the flow, lifted like colour (≈ the warped source
alpha). uint8 and uint16 results keep their depth (rounded), floats stay float32.

**In place with a box**: the lifted box is composited back with a feather ramp of ``feather`` pixels inside the box
edges that lie inside the image, blending toward the source *warped by the same field* (so a motion that fades out
toward the box edge draws no double edges; with zero flow it is the source itself); everything outside the box is
bit-identical to the source. Within the box, pixels
whose output cannot differ from the source (zero flow around them and an unchanged low-res result) are copied from the
source, which makes a typical expression edit touch only the eye and mouth regions.
"""

from ..box import Box
from ..errors import ResWarpError
from .cpu import Lifter, estimate_flow, from_work, lift, to_work
from .geometry import DEFAULT_GRID, INTERPS, MODES, active_rects, level_sizes

__all__ = ["Box", "DEFAULT_GRID", "INTERPS", "Lifter", "MODES", "ResWarpError", "active_rects", "estimate_flow",
           "from_work", "level_sizes", "lift", "to_work"]
