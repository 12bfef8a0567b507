"""Shape rasterisers and instance textures for the synthetic VIS generator.

Every category of the synthetic datasets is a *shape* (a dataset names its shapes) with a *typical look*, the
way real categories have a typical appearance: category ``k`` has its own hue and texture
(:func:`category_appearance`), and every instance varies around them (hue, saturation, brightness, texture
scale and direction, second colour). A configurable share of instances gets a random, atypical look instead
(:func:`random_appearance`), so the outline must still carry the category. A shape is a predicate on
object-local coordinates ``(u, v)``: the pixel offset from the object centre, rotated by ``-angle`` and divided
by the object radius ``s`` (pixels), so every shape fits the unit disk. ``v`` points down, like image rows.

Shapes are chosen to stay distinguishable at the smoke resolution (96x160, radii of 10-25 px) and under
rotation (no square/diamond pair): filled disk, square, triangle, five-point star, ring, plus-shaped cross,
crescent, arrow, heart, L-shaped ell and pill (capsule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _regular_polygon(u: np.ndarray, v: np.ndarray, n: int, radius: float, phase: float) -> np.ndarray:
    """Inside test of a regular n-gon of circumradius ``radius``; ``phase``: angle of the first vertex."""
    inside = np.ones(u.shape, dtype=bool)
    apothem = radius * np.cos(np.pi / n)
    for k in range(n):
        # outward normal of edge k sits halfway between vertices k and k+1
        a = phase + (2 * k + 1) * np.pi / n
        inside &= u * np.cos(a) + v * np.sin(a) <= apothem
    return inside


def _polygon(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over pixels; ``verts`` is (V, 2) of (u, v)."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        (u1, v1), (u2, v2) = verts[i], verts[(i + 1) % n]
        if v1 == v2:
            continue
        crosses = (v1 > v) != (v2 > v)
        u_at = u1 + (v - v1) * (u2 - u1) / (v2 - v1)
        inside ^= crosses & (u < u_at)
    return inside


def _circle(u, v):
    return u * u + v * v <= 0.85**2


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.68


def _triangle(u, v):
    # apex up (v points down, so the first vertex is at angle -90 degrees)
    return _regular_polygon(u, v, 3, 0.98, -np.pi / 2)


_STAR = np.array(
    [
        (r * np.cos(a), r * np.sin(a))
        for k in range(10)
        for r, a in [((1.0 if k % 2 == 0 else 0.42), -np.pi / 2 + k * np.pi / 5)]
    ]
)


def _star(u, v):
    return _polygon(u, v, _STAR)


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 0.92**2) & (r2 >= 0.52**2)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.27) & (av <= 0.92)) | ((av <= 0.27) & (au <= 0.92))


def _crescent(u, v):
    return (u * u + v * v <= 0.92**2) & ((u - 0.42) ** 2 + v * v >= 0.72**2)


_ARROW = np.array(
    [(-0.92, -0.2), (0.08, -0.2), (0.08, -0.62), (0.95, 0.0), (0.08, 0.62), (0.08, 0.2), (-0.92, 0.2)]
)


def _arrow(u, v):
    return _polygon(u, v, _ARROW)


def _heart(u, v):
    # implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 with y up; spans x in [-1.14, 1.14], y in [-1, 1.25]
    x = u / 0.75
    y = -(v / 0.75) + 0.15
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


_ELL = 0.8 * np.array([(-0.62, -0.9), (-0.1, -0.9), (-0.1, 0.38), (0.72, 0.38), (0.72, 0.9), (-0.62, 0.9)])


def _ell(u, v):
    return _polygon(u, v, _ELL)


def _pill(u, v):
    # a capsule: a 0.9 x 0.9 core with round ends, 2:1 long; a chunky outline unlike any other shape here
    du = np.maximum(np.abs(u) - 0.45, 0.0)
    return du * du + v * v <= 0.45**2


# name -> predicate; a dataset's categories are a selection of these names (``SynthConfig.shapes``)
SHAPES: dict[str, ShapeFn] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "ring": _ring,
    "cross": _cross,
    "crescent": _crescent,
    "arrow": _arrow,
    "heart": _heart,
    "ell": _ell,
    "pill": _pill,
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)


def _shape_radii(name: str, n: int = 401) -> tuple[float, float]:
    """(inner, outer): radius of the largest origin-centred disk inside the shape, and of the smallest one
    containing it, in unit radii. Measured on a fine grid so the values match the rasteriser exactly."""
    g = np.linspace(-1.2, 1.2, n)
    u, v = np.meshgrid(g, g)
    inside = SHAPES[name](u, v)
    r = np.hypot(u, v)
    outer = float(r[inside].max())
    inner = float(r[~inside].min())
    return inner, outer


SHAPE_RADII: dict[str, tuple[float, float]] = {name: _shape_radii(name) for name in SHAPE_NAMES}


def rasterize(shape: str, cx: float, cy: float, s: float, angle: float, height: int, width: int):
    """Rasterise one shape instance.

    Args:
        shape: a key of ``SHAPES``; cx, cy: centre in pixels (pixel (x, y) has its centre at x + 0.5,
            y + 0.5); s: radius in pixels; angle: rotation in radians; height, width: frame size.
    Returns:
        (box, mask, u, v) where box = (y0, y1, x0, x1) is the clipped bounding window of the shape, mask the
        (y1-y0, x1-x0) bool inside test and u, v the object-local coordinates of that window (for texturing).
        An empty window (shape fully outside the frame) has y0 == y1 or x0 == x1.
    """
    pad = 1.05 * s + 1.0  # every shape lies within radius 1 (SHAPE_RADII[...][1] <= 1)
    x0, x1 = max(0, int(np.floor(cx - pad))), min(width, int(np.ceil(cx + pad)) + 1)
    y0, y1 = max(0, int(np.floor(cy - pad))), min(height, int(np.ceil(cy + pad)) + 1)
    if x0 >= x1 or y0 >= y1:
        empty = np.zeros((max(0, y1 - y0), max(0, x1 - x0)))
        return (y0, max(y0, y1), x0, max(x0, x1)), empty.astype(bool), empty, empty
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5 - cx
    ys = np.arange(y0, y1, dtype=np.float64) + 0.5 - cy
    dx, dy = xs[None, :], ys[:, None]  # broadcast to the (h, w) window below
    c, sn = np.cos(angle), np.sin(angle)
    u = (c * dx + sn * dy) / s
    v = (-sn * dx + c * dy) / s
    return (y0, y1, x0, x1), SHAPES[shape](u, v), u, v


# --------------------------------------------------------------------------------------------------------
# appearance: colour + texture, defined in object-local coordinates so that it moves and turns with the object


TEXTURES = ("solid", "stripes", "checker", "noise", "spots")


@dataclass(frozen=True)
class Appearance:
    """Per-instance look. Two instances with equal Appearance (and shape, size, pose) render identically."""

    texture: str
    color1: tuple[float, float, float]
    color2: tuple[float, float, float]
    period: float  # texture period in unit radii
    angle: float  # stripe direction (radians)
    lattice: np.ndarray = field(compare=False, repr=False)  # (6, 6, 3) colour lattice for "noise"

    def __eq__(self, other):  # numpy field: compare explicitly
        if not isinstance(other, Appearance):
            return NotImplemented
        return (self.texture, self.color1, self.color2, self.period, self.angle) == (
            other.texture,
            other.color1,
            other.color2,
            other.period,
            other.angle,
        ) and np.array_equal(self.lattice, other.lattice)

    __hash__ = None


def _hsv_color(h: float, s: float, v: float) -> np.ndarray:
    """RGB (0..255 floats) of hue ``h`` in sextants [0, 6), saturation ``s`` in [0, 1], value ``v`` in 0..255."""
    h = h % 6.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h)]
    return np.array(rgb) + (v - c)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour: random hue, high saturation, medium-high value (stands out from backgrounds)."""
    h = rng.uniform(0, 6)
    s = rng.uniform(0.55, 1.0)
    v = rng.uniform(150, 255)
    return _hsv_color(h, s, v)


def _appearance(rng: np.random.Generator, texture: str, c1: np.ndarray, c2: np.ndarray | None = None) -> Appearance:
    """The look of an instance of main colour ``c1``; without ``c2`` a second colour of clearly different
    brightness (so stripes and checkers survive JPEG) is drawn, in either order. Texture scale, direction and
    the "noise" lattice are drawn per instance."""
    if c2 is None:
        c2 = np.clip(c1 * rng.uniform(0.25, 0.55) + rng.uniform(0, 60, size=3), 0, 255)
        if rng.random() < 0.5:
            c1, c2 = c2, c1
    lattice = c1 + rng.normal(0, 45, size=(6, 6, 3))
    return Appearance(
        texture=texture,
        color1=tuple(float(x) for x in np.round(c1, 1)),
        color2=tuple(float(x) for x in np.round(c2, 1)),
        period=float(rng.uniform(0.35, 0.7)),
        angle=float(rng.uniform(0, np.pi)),
        lattice=np.clip(np.round(lattice, 1), 0, 255),
    )


def random_appearance(rng: np.random.Generator) -> Appearance:
    """Draw a random colour/texture, independent of the category (an atypical instance)."""
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    return _appearance(rng, texture, _random_color(rng))


# Category k's typical look (of K categories): hue ``category_hue(k, K)`` (sextants; neighbouring ids far apart on
# the colour wheel) and texture CATEGORY_TEXTURES[k]. Categories may share a texture, never a hue.
CATEGORY_TEXTURES: tuple[str, ...] = tuple(TEXTURES[k % len(TEXTURES)] for k in range(len(SHAPE_NAMES)))
HUE_JITTER = 0.15  # +- sextants (9 degrees) around the category hue; with 10 categories hues are 36 degrees apart


def category_hue(category: int, num_categories: int = len(SHAPE_NAMES)) -> float:
    """Hue (sextants, 0..6) of category ``category`` of ``num_categories``: evenly spread, stepping by a
    stride coprime to K so that consecutive ids are far apart."""
    step = next(s for s in (3, 2, 1) if np.gcd(s, num_categories) == 1 or s == 1)
    return (category * step * 6.0 / num_categories) % 6.0


def category_appearance(rng: np.random.Generator, category: int,
                        num_categories: int = len(SHAPE_NAMES)) -> Appearance:
    """A typical look of category index ``category`` (0-based) of ``num_categories``: its main colour has the
    category's hue +- ``HUE_JITTER`` with per-instance saturation and brightness, its second colour the same
    hue, darker and paler (so the whole instance reads as the category's colour), and the category's texture
    with per-instance scale and direction."""
    h = category_hue(category, num_categories) + rng.uniform(-HUE_JITTER, HUE_JITTER)
    c1 = _hsv_color(h, rng.uniform(0.6, 1.0), rng.uniform(170, 255))
    c2 = _hsv_color(h, rng.uniform(0.3, 0.6), rng.uniform(60, 120))
    return _appearance(rng, CATEGORY_TEXTURES[category], c1, c2)


def texture_colors(app: Appearance, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colours (..., 3) float of ``app`` at object-local coordinates u, v (any equal shapes)."""
    c1, c2 = np.asarray(app.color1), np.asarray(app.color2)
    if app.texture == "solid":
        # a soft shading gradient so that solid objects are not flat
        w = np.clip(0.5 + 0.25 * (u + v), 0, 1)[..., None]
        return c1 * (0.75 + 0.25 * w)
    if app.texture == "stripes":
        t = u * np.cos(app.angle) + v * np.sin(app.angle)
        on = (np.floor(t / (app.period / 2)) % 2 == 0)[..., None]
        return np.where(on, c1, c2)
    if app.texture == "checker":
        p = app.period / 1.5
        on = ((np.floor(u / p) + np.floor(v / p)) % 2 == 0)[..., None]
        return np.where(on, c1, c2)
    if app.texture == "spots":
        p = app.period
        du = (u / p) % 1.0 - 0.5
        dv = (v / p) % 1.0 - 0.5
        on = (du * du + dv * dv < 0.09)[..., None]
        return np.where(on, c2, c1)
    # "noise": bilinear interpolation of a small colour lattice spanning [-1, 1]^2
    lat = app.lattice
    n = lat.shape[0] - 1
    gu = np.clip((u + 1) / 2 * n, 0, n - 1e-6)
    gv = np.clip((v + 1) / 2 * n, 0, n - 1e-6)
    iu, iv = np.floor(gu).astype(int), np.floor(gv).astype(int)
    fu, fv = (gu - iu)[..., None], (gv - iv)[..., None]
    top = lat[iv, iu] * (1 - fu) + lat[iv, iu + 1] * fu
    bot = lat[iv + 1, iu] * (1 - fu) + lat[iv + 1, iu + 1] * fu
    return top * (1 - fv) + bot * fv
