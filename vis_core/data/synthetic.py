"""Deterministic synthetic video instance segmentation (VIS) data in the exact YouTube-VIS layout.

``vis data synth --preset ovis --out DIR`` writes::

    DIR/train/JPEGImages/<video>/<frame>.jpg   DIR/train/instances.json
    DIR/valid/JPEGImages/<video>/<frame>.jpg   DIR/valid/instances.json

so that one loader serves real and synthetic data. The json is plain YouTube-VIS (OVIS-style ``occlusion``
labels for the ``ovis`` preset); nothing synthetic-only is recorded in it.

What the videos contain (each property is checked in ``tests/test_synthetic.py``):

* five categories (``DEFAULT_SHAPES``; any selection of ``shapes.SHAPE_NAMES`` by config), each a *shape* with a
  typical look (its own hue and texture) varied per instance; a share of instances (``1 - category_looks``)
  looks atypical (random colour and texture), so the outline still matters;
* smooth motion: velocity with small random acceleration, bounces off the frame border, slow scale oscillation
  and rotation; "roaming" objects travel beyond the border, leave the frame and come back later;
* a fixed depth order per instance; the visible mask is the instance's own mask minus all masks in front of
  it. Some videos contain a *hider* pair: a large object moving over a smaller one so that the smaller one is
  fully occluded for several frames and then re-appears;
* some videos contain a *twin* pair: two instances of one category with identical appearance, size and
  rotation whose paths cross (at the crossing frame one exactly covers the other), so identity must come from
  motion;
* textured, noisy backgrounds, per-frame sensor noise and mild integer camera jitter.

Visibility and occlusion. For an instance in a frame, ``full`` is its own mask clipped to the frame and
``visible`` its visible part. An instance whose visible area is below ``min_visible_area`` pixels (default 4)
is *not visible* in that frame: its segmentation, area, bbox and occlusion label are null. Otherwise the
occluded fraction is ``f = 1 - |visible| / |full|`` and the OVIS label is

* ``"no_occlusion"`` if f < 0.05,
* ``"slight_occlusion"`` if 0.05 <= f < 0.5,
* ``"severe_occlusion"`` if f >= 0.5.

Being cut by the frame border is not occlusion (``full`` is clipped to the frame first).

Determinism: every video is drawn from its own ``numpy.random.Generator`` seeded with ``(seed, split,
index)``; no global RNG is touched. The same seed gives byte-identical json and JPEG files (Pillow, fixed
quality).

Presets (frame size and counts are knobs; sizes default to the 96x160 smoke resolution):

* ``ytvis``: 20-36 frames, 1-4 objects, light occlusion;
* ``ovis``: 20-36 frames, 2-5 large objects drawn towards the centre, a hider pair in half of the videos,
  occlusion labels (about 65% of tracks light, 17% medium, 18% heavy by the OVIS occlusion split);
* ``long``: 150-600 frames, 1-5 objects that mostly roam, i.e. leave the frame and re-enter after a while;
* ``images``: single frames of 2-8 objects, some overlapping: the still images pre-training crops into pseudo
  videos (the COCO analogue).

Training sets need not be written: ``synthetic_stream`` renders training clips on the fly from the same
generator (a seeded stream, never a fixed set a model can memorise); the validation split stays on disk.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vis_core.data.shapes import (
    SHAPE_NAMES,
    SHAPE_RADII,
    Appearance,
    category_appearance,
    random_appearance,
    rasterize,
    texture_colors,
)
from vis_core.data.ytvis import OCCLUSION_LABELS, masks_to_rles, rle_bbox, save_json

# OVIS occlusion thresholds on the occluded fraction f: f < NO -> no, f < SEVERE -> slight, else severe
OCCLUSION_NO_MAX = 0.05
OCCLUSION_SEVERE_MIN = 0.5

# hider pairs need an occluder that covers a disk around its centre
_OCCLUDER_SHAPES = tuple(n for n in SHAPE_NAMES if SHAPE_RADII[n][0] >= 0.6)


# The categories of the synthetic datasets: shapes that the smoke resolution can represent. A mask predicted at
# stride 8 (IDOL's dynamic mask head at 96x160) can reach IoU 0.92 / 0.89 / 0.88 / 0.83 / 0.79 with a circle,
# square, heart, pill and triangle of radius 12-24 px, but only 0.56-0.67 with the star, ring, cross,
# crescent, arrow and ell (measured; thin parts and holes vanish). With the star among the five, a tiny IDOL
# scored 9 AP on stars against 34-42 on circles, squares and hearts; the others stay available to configs.
DEFAULT_SHAPES = ("circle", "square", "triangle", "pill", "heart")


def categories(shapes: tuple[str, ...] = DEFAULT_SHAPES) -> list[dict]:
    """The json categories of a dataset whose categories are ``shapes``: ids 1..K in that order."""
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(shapes)]



@dataclass(frozen=True)
class SynthConfig:
    """Generator knobs. Fractions are relative to the frame: radii to min(H, W), speeds to max(H, W)."""

    preset: str = "ytvis"
    height: int = 96
    width: int = 160
    frames: tuple[int, int] = (20, 36)  # video length range, inclusive
    objects: tuple[int, int] = (1, 4)  # instances per video, inclusive
    radius: tuple[float, float] = (0.10, 0.22)  # object radius / min(H, W)
    speed: tuple[float, float] = (0.006, 0.018)  # pixels per frame / max(H, W)
    scale_change: float = 0.2  # max amplitude of the log-scale oscillation
    spin: float = 0.06  # max angular speed, radians per frame
    roam_prob: float = 0.3  # chance that an object roams beyond the border (leaves and re-enters)
    offscreen: tuple[float, float] = (0.05, 0.3)  # how far beyond the border roamers go, fraction of width
    twin_prob: float = 0.35  # chance of a crossing pair of identical-looking instances
    hider_prob: float = 0.25  # chance (per slot) of a big object fully covering a smaller one
    max_hiders: int = 1
    crowding: float = 0.0  # 0: start anywhere; 1: start clustered near the centre
    category_looks: float = 0.9  # chance that an instance has its category's typical look (else a random one)
    shapes: tuple[str, ...] = DEFAULT_SHAPES  # the categories (ids 1..K in this order), names of SHAPE_NAMES
    occlusion_labels: bool = False  # write OVIS "occlusion" per-frame labels
    camera_jitter: int = 2  # max camera offset in pixels
    noise: float = 4.0  # per-pixel sensor noise std (0-255 scale)
    min_visible_area: int = 4  # fewer visible pixels than this: not visible in that frame
    jpeg_quality: int = 90
    train_videos: int = 60
    valid_videos: int = 20

    def __post_init__(self):
        if self.height < 16 or self.width < 16:
            raise ValueError(f"SynthConfig: frame size {self.height}x{self.width} is below the 16x16 minimum")
        for name in ("frames", "objects", "radius", "speed", "offscreen"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"SynthConfig: field '{name}' must be a (low, high) range, got {(lo, hi)}")
        if self.frames[0] < 1 or self.objects[0] < 1:
            raise ValueError("SynthConfig: 'frames' and 'objects' must be at least 1")
        unknown = [n for n in self.shapes if n not in SHAPE_NAMES]
        if unknown or len(set(self.shapes)) != len(self.shapes) or len(self.shapes) < 2:
            raise ValueError(f"SynthConfig: 'shapes' must name at least two distinct shapes of {SHAPE_NAMES}, "
                             f"got {self.shapes}")
        if not 0.0 <= self.category_looks <= 1.0:
            raise ValueError(f"SynthConfig: 'category_looks' is a probability, got {self.category_looks}")


PRESETS: dict[str, SynthConfig] = {
    "ytvis": SynthConfig(preset="ytvis"),
    "ovis": SynthConfig(
        preset="ovis",
        objects=(2, 5),
        radius=(0.14, 0.28),
        roam_prob=0.2,
        twin_prob=0.4,
        hider_prob=0.5,
        max_hiders=1,
        crowding=0.3,
        occlusion_labels=True,
    ),
    # still images for pre-training (the COCO analogue): scenes of a few objects, some overlapping
    "images": SynthConfig(
        preset="images",
        frames=(1, 1),
        objects=(2, 8),
        radius=(0.12, 0.28),
        roam_prob=0.1,
        twin_prob=0.0,
        hider_prob=0.0,
        crowding=0.4,
    ),
    "long": SynthConfig(
        preset="long",
        frames=(150, 600),
        objects=(1, 5),
        roam_prob=0.8,
        offscreen=(0.05, 0.4),
        twin_prob=0.4,
        hider_prob=0.4,
        train_videos=8,
        valid_videos=4,
    ),
}


def make_config(preset: str | SynthConfig = "ytvis", **overrides) -> SynthConfig:
    """A preset by name (or a config) with keyword overrides; ``None`` overrides are ignored."""
    if isinstance(preset, SynthConfig):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SynthConfig)}
    if unknown:
        raise ValueError(f"unknown SynthConfig field(s): {sorted(unknown)}")
    return dataclasses.replace(base, **overrides)


# ------------------------------------------------------------------------------------------------ planning
@dataclass
class _Instance:
    """Planned instance: shape, look, depth (larger = nearer the camera) and per-frame pose (T,) arrays."""

    shape: str
    appearance: Appearance
    depth: float
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray


@dataclass
class SyntheticVideo:
    """One rendered video, with ground truth and metadata for tests.

    ``masks[i]`` is the (T, H, W) bool *visible* mask of instance i (empty where not visible),
    ``full_area[i]`` the (T,) pixel count of its unoccluded mask clipped to the frame,
    ``occluded_fraction[i]`` (T,) float (nan where not visible), ``occlusion[i]`` the per-frame OVIS label
    (None where not visible). Instance ids are 1..N in planning order; instances never visible are dropped.
    ``events`` lists what happened:

    * ``{"kind": "crossing", "instances": (back, front), "frame": t}``: a twin pair meets at frame t;
    * ``{"kind": "hider", "instances": (hidden, occluder), "frame": t}``: a hider pair is aligned at frame t;
    * ``{"kind": "full_occlusion", "instance": i, "start": t0, "end": t1, "reappears": bool}``: inside the
      frame but fully covered from t0 to t1 (inclusive);
    * ``{"kind": "reentry", "instance": i, "left": t0, "back": t1}``: out of the frame from t0, back at t1.
    """

    name: str
    split: str
    index: int
    seed: int
    frames: np.ndarray  # (T, H, W, 3) uint8
    masks: dict[int, np.ndarray]
    categories: dict[int, int]
    appearances: dict[int, Appearance]
    depth: dict[int, float]
    full_area: dict[int, np.ndarray]
    occluded_fraction: dict[int, np.ndarray]
    occlusion: dict[int, list[str | None]]
    centers: dict[int, np.ndarray] = field(default_factory=dict)  # (T, 2) x, y in image pixels
    radii: dict[int, np.ndarray] = field(default_factory=dict)  # (T,) object radius in pixels
    angles: dict[int, np.ndarray] = field(default_factory=dict)  # (T,) rotation in radians
    events: list[dict] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


def _video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32 gives a stable integer for the split name (Python's hash() is salted per process)
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)]))


def _simulate(rng, p, v, steps, bounds, vrange, accel, frame_size) -> np.ndarray:
    """Point motion with random acceleration, speed clamped to ``vrange`` and reflection at ``bounds``.

    Returns (steps + 1, 2) positions starting at ``p``. bounds = (xlo, xhi, ylo, yhi) for the centre;
    frame_size = (W, H): outside the frame the velocity is pulled back towards it.
    """
    lo, hi = (float(bounds[0]), float(bounds[2])), (float(bounds[1]), float(bounds[3]))
    frame = (float(frame_size[0]), float(frame_size[1]))
    kicks = rng.normal(0.0, accel, (steps, 2)).tolist()  # drawn at once; the loop below is plain floats
    # a start outside the bounds would make the first bounce a jump
    p = [min(max(float(p[d]), lo[d]), hi[d]) for d in range(2)]
    v = [float(v[0]), float(v[1])]
    out = [tuple(p)]
    pull = 0.25 * accel
    for kick in kicks:
        for d in range(2):
            v[d] += kick[d]
            if p[d] < 0 or p[d] > frame[d]:  # off screen: a gentle pull back towards the frame, so roamers return
                v[d] += pull if frame[d] / 2 - p[d] > 0 else -pull
        speed = math.hypot(v[0], v[1])
        scale = min(max(speed, vrange[0]), vrange[1]) / max(speed, 1e-9)
        for d in range(2):
            v[d] *= scale
            p[d] += v[d]
            # bounce: mirror the overshoot back inside and flip that velocity component
            if p[d] < lo[d]:
                p[d], v[d] = min(2 * lo[d] - p[d], hi[d]), abs(v[d])
            elif p[d] > hi[d]:
                p[d], v[d] = max(2 * hi[d] - p[d], lo[d]), -abs(v[d])
        out.append(tuple(p))
    return np.array(out, dtype=float)


def _simulate_through(rng, q, v, t_star, length, bounds, vrange, accel, frame_size) -> np.ndarray:
    """(length, 2) path that is at ``q`` with velocity ``v`` at frame ``t_star``: simulated forward from there
    and backward (with reversed velocity), so that planned meetings happen exactly at ``t_star``."""
    fwd = _simulate(rng, q, v, length - 1 - t_star, bounds, vrange, accel, frame_size)
    bwd = _simulate(rng, q, -np.asarray(v), t_star, bounds, vrange, accel, frame_size)
    return np.concatenate([bwd[::-1], fwd[1:]], axis=0)


class _Planner:
    """Draws the instances of one video (shapes, looks, depths, trajectories) from one Generator."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator, length: int):
        self.cfg, self.rng, self.T = cfg, rng, length
        self.H, self.W = cfg.height, cfg.width
        self.size = (self.W, self.H)
        self.R = min(self.H, self.W)
        L = max(self.H, self.W)
        self.vrange = (cfg.speed[0] * L, cfg.speed[1] * L)
        self.accel = 0.12 * self.vrange[1]

    def radius(self) -> float:
        return self.rng.uniform(*self.cfg.radius) * self.R

    def shape(self) -> str:
        return self.cfg.shapes[int(self.rng.integers(len(self.cfg.shapes)))]

    def look(self, shape: str) -> Appearance:
        """The category's typical look (probability ``category_looks``) or a random, atypical one."""
        if self.rng.random() < self.cfg.category_looks:
            return category_appearance(self.rng, self.cfg.shapes.index(shape), len(self.cfg.shapes))
        return random_appearance(self.rng)

    def pose(self, r0: float, still: bool = False):
        """Scale and rotation tracks: radius(t) = r0 * exp(a sin(2 pi t / P + phi)), angle(t) = a0 + w t."""
        t = np.arange(self.T)
        a = 0.0 if still else self.rng.uniform(0, self.cfg.scale_change)
        period, phi = self.rng.uniform(20, 80), self.rng.uniform(0, 2 * np.pi)
        radius = r0 * np.exp(a * np.sin(2 * np.pi * t / period + phi))
        angle = self.rng.uniform(0, 2 * np.pi) + self.rng.uniform(-self.cfg.spin, self.cfg.spin) * t
        return radius, angle

    def bounds(self, r0: float, roams: bool):
        """Centre bounds: bouncers stay mostly inside; roamers turn back only well outside the frame."""
        if roams:
            extra = self.rng.uniform(*self.cfg.offscreen) * self.W
            m = r0 + extra
            return (-m, self.W + m, -m * self.H / self.W - r0, self.H + m * self.H / self.W + r0)
        mx, my = min(0.7 * r0, self.W / 2), min(0.7 * r0, self.H / 2)
        return (mx, self.W - mx, my, self.H - my)

    def velocity(self) -> np.ndarray:
        a = self.rng.uniform(0, 2 * np.pi)
        return self.rng.uniform(*self.vrange) * np.array([np.cos(a), np.sin(a)])

    def start(self, r0: float, roams: bool):
        """Initial position and velocity; half of the roamers start outside the frame, heading in."""
        rng, H, W = self.rng, self.H, self.W
        if roams and rng.random() < 0.5:
            side = int(rng.integers(4))
            gap = r0 + rng.uniform(0, 0.5) * r0
            inward = [0.0, np.pi, np.pi / 2, -np.pi / 2][side] + rng.uniform(-1.0, 1.0)
            along = rng.uniform(0.15, 0.85)
            p = [(-gap, along * H), (W + gap, along * H), (along * W, -gap), (along * W, H + gap)][side]
            v = rng.uniform(*self.vrange) * np.array([np.cos(inward), np.sin(inward)])
            return np.array(p), v
        anywhere = rng.uniform([0, 0], [W, H])
        clustered = np.array([W / 2, H / 2]) + rng.normal(0, 0.12, 2) * np.array([W, H])
        c = self.cfg.crowding
        return (1 - c) * anywhere + c * clustered, self.velocity()

    def single(self) -> _Instance:
        shape = self.shape()
        app = self.look(shape)
        r0 = self.radius()
        roams = self.rng.random() < self.cfg.roam_prob
        p, v = self.start(r0, roams)
        path = _simulate(
            self.rng, p, v, self.T - 1, self.bounds(r0, roams), self.vrange, self.accel, self.size
        )
        radius, angle = self.pose(r0)
        return _Instance(shape, app, 0.0, path[:, 0], path[:, 1], radius, angle)

    def meeting_point(self, r0: float) -> tuple[int, np.ndarray]:
        """A frame in the middle third-ish of the video and a point well inside the frame."""
        t_star = int(round(self.rng.uniform(0.35, 0.65) * (self.T - 1)))
        mx, my = min(r0, self.W / 3), min(r0, self.H / 3)
        return t_star, self.rng.uniform([mx, my], [self.W - mx, self.H - my])

    def twins(self) -> tuple[_Instance, _Instance, int]:
        """Two identical-looking instances (same shape, appearance, size and rotation) whose paths cross at
        ``t_star``; there the front one exactly covers the back one."""
        shape = self.shape()
        app = self.look(shape)
        r0 = self.radius()
        radius, angle = self.pose(r0)
        t_star, q = self.meeting_point(r0)
        v1 = self.velocity()
        turn = self.rng.uniform(np.pi / 3, np.pi) * self.rng.choice([-1.0, 1.0])
        c, s = np.cos(turn), np.sin(turn)
        v2 = np.array([c * v1[0] - s * v1[1], s * v1[0] + c * v1[1]])
        out = []
        for v in (v1, v2):
            roams = self.rng.random() < self.cfg.roam_prob
            path = _simulate_through(
                self.rng, q, v, t_star, self.T, self.bounds(r0, roams), self.vrange, self.accel, self.size
            )
            out.append(_Instance(shape, app, 0.0, path[:, 0], path[:, 1], radius.copy(), angle.copy()))
        return out[0], out[1], t_star

    def hider(self) -> tuple[_Instance, _Instance, int]:
        """(hidden, occluder, t_star): a big front object passes over a small one, covering it completely for
        a few frames around ``t_star`` (relative speed = 2 * margin / covered-frames)."""
        rng = self.rng
        occluders = [n for n in self.cfg.shapes if n in _OCCLUDER_SHAPES] or list(self.cfg.shapes)
        occ_shape = occluders[int(rng.integers(len(occluders)))]
        hid_shape = self.shape()
        r_hid = self.cfg.radius[0] * self.R * rng.uniform(0.7, 1.0)
        margin = rng.uniform(0.2, 0.4) * r_hid + 1.5
        r_occ = (r_hid * SHAPE_RADII[hid_shape][1] + margin) / SHAPE_RADII[occ_shape][0]
        t_star, q = self.meeting_point(r_occ)
        roams = rng.random() < self.cfg.roam_prob
        path = _simulate_through(
            rng,
            q,
            self.velocity(),
            t_star,
            self.T,
            self.bounds(r_occ, roams),
            self.vrange,
            self.accel,
            self.size,
        )
        covered = rng.uniform(3, 6)
        a = rng.uniform(0, 2 * np.pi)
        delta = 2 * margin / covered * np.array([np.cos(a), np.sin(a)])
        # near t_star the hidden object rides along with the occluder plus a constant drift, so the cover is
        # exact; before and after that window it moves on its own (a roamer: it may leave and come back)
        hid_path = path + delta[None, :] * (np.arange(self.T) - t_star)[:, None]
        window = 12
        lo, hi = max(0, t_star - window), min(self.T - 1, t_star + window)
        bounds = self.bounds(r_hid, roams=True)
        if hi < self.T - 1:
            v = hid_path[hi] - hid_path[hi - 1]
            hid_path[hi:] = _simulate(
                rng, hid_path[hi], v, self.T - 1 - hi, bounds, self.vrange, self.accel, self.size
            )
        if lo > 0:
            v = hid_path[lo] - hid_path[lo + 1]
            hid_path[: lo + 1] = _simulate(
                rng, hid_path[lo], v, lo, bounds, self.vrange, self.accel, self.size
            )[::-1]
        occ_radius, occ_angle = self.pose(r_occ, still=True)
        hid_radius, hid_angle = self.pose(r_hid, still=True)
        occ_app, hid_app = self.look(occ_shape), self.look(hid_shape)
        occluder = _Instance(occ_shape, occ_app, 0.0, path[:, 0], path[:, 1], occ_radius, occ_angle)
        hidden = _Instance(hid_shape, hid_app, 0.0, hid_path[:, 0], hid_path[:, 1], hid_radius, hid_angle)
        return hidden, occluder, t_star


def _plan(cfg: SynthConfig, rng: np.random.Generator):
    """Draw the video length, the instances (scripted pairs first) and their depth order."""
    T = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
    n = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    planner = _Planner(cfg, rng, T)
    instances: list[_Instance] = []
    pairs: list[tuple[str, int, int, int]] = []  # (kind, back index, front index, frame)
    if n >= 2 and rng.random() < cfg.twin_prob:
        a, b, t = planner.twins()
        pairs.append(("crossing", len(instances), len(instances) + 1, t))
        instances += [a, b]
    for _ in range(cfg.max_hiders):
        if n - len(instances) >= 2 and rng.random() < cfg.hider_prob:
            h, o, t = planner.hider()
            pairs.append(("hider", len(instances), len(instances) + 1, t))
            instances += [h, o]
    while len(instances) < n:
        instances.append(planner.single())
    depths = rng.permutation(len(instances)).astype(float)
    for _, back, front, _ in pairs:  # scripted pairs need their stated front/back order
        if depths[back] > depths[front]:
            depths[back], depths[front] = depths[front], depths[back]
    for inst, d in zip(instances, depths, strict=True):
        inst.depth = float(d)
    return T, instances, pairs


# ----------------------------------------------------------------------------------------------- rendering
def _value_noise(
    rng: np.random.Generator, h: int, w: int, cells: tuple[int, int], channels: int
) -> np.ndarray:
    """Smooth noise: a random (cells+1) lattice bilinearly upsampled to (h, w, channels), values ~N(0, 1)."""
    gh, gw = cells[0] + 1, cells[1] + 1
    grid = rng.normal(0, 1, (gh, gw, channels))
    ys, xs = np.linspace(0, gh - 1, h), np.linspace(0, gw - 1, w)
    y0 = np.minimum(np.floor(ys).astype(int), gh - 2)
    x0 = np.minimum(np.floor(xs).astype(int), gw - 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    rows = grid[:, x0] * (1 - fx) + grid[:, x0 + 1] * fx  # (gh, w, c): along x first, then along y
    return rows[y0] * (1 - fy) + rows[y0 + 1] * fy


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float background: a muted base colour, large and small blotches, sometimes faint stripes."""
    base = rng.uniform(70, 170) + rng.uniform(-30, 30, 3)
    bg = base + 40 * _value_noise(rng, h, w, (2, 3), 3) + 16 * _value_noise(rng, h, w, (10, 16), 3)
    if rng.random() < 0.5:
        a, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        yy, xx = np.mgrid[0:h, 0:w]
        bg += 12 * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)[..., None]
    return bg


def _camera_path(rng: np.random.Generator, T: int, jitter: int) -> np.ndarray:
    """(T, 2) integer camera offsets (dx, dy) in [-jitter, jitter]: a damped random walk (hand shake)."""
    out = np.zeros((T, 2), dtype=int)
    if jitter <= 0:
        return out
    c = np.zeros(2)
    for t in range(T):
        c = np.clip(0.8 * c + rng.normal(0, 0.5 * jitter, 2), -jitter, jitter)
        out[t] = np.round(c).astype(int)
    return out


def _occlusion_label(fraction: float) -> str:
    if fraction < OCCLUSION_NO_MAX:
        return OCCLUSION_LABELS[0]
    if fraction < OCCLUSION_SEVERE_MIN:
        return OCCLUSION_LABELS[1]
    return OCCLUSION_LABELS[2]


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) index runs where ``flags`` is True."""
    out, start = [], None
    for t, f in enumerate(flags):
        if f and start is None:
            start = t
        elif not f and start is not None:
            out.append((start, t - 1))
            start = None
    if start is not None:
        out.append((start, len(flags) - 1))
    return out


@dataclass
class VideoPlan:
    """Everything drawn for one video before any pixel is rendered: length, instances (with trajectories),
    scripted pairs, background, camera path and the far-to-near depth order. Any subset of its frames can be
    rendered (:func:`render_frames`) and gives the pixels the whole video has at those frames."""

    cfg: SynthConfig
    seed: int
    split: str
    index: int
    length: int
    instances: list[_Instance]
    pairs: list[tuple[str, int, int, int]]
    background: np.ndarray  # (H + 2J, W + 2J, 3) float
    camera: np.ndarray  # (T, 2) int offsets

    @property
    def order(self) -> list[int]:
        return sorted(range(len(self.instances)), key=lambda i: self.instances[i].depth)  # far to near


def plan_video(preset_or_cfg: str | SynthConfig, seed: int, index: int, split: str = "train") -> VideoPlan:
    """Draw video ``index`` of ``split`` (a function of ``(seed, split, index)`` only)."""
    cfg = make_config(preset_or_cfg)
    rng = _video_rng(seed, split, index)
    T, instances, pairs = _plan(cfg, rng)
    J = max(0, int(cfg.camera_jitter))
    bg = _background(rng, cfg.height + 2 * J, cfg.width + 2 * J)
    return VideoPlan(cfg, int(seed), split, int(index), T, instances, pairs, bg, _camera_path(rng, T, J))


def _frame_rng(plan: VideoPlan, t: int) -> np.random.Generator:
    # per-frame sensor noise from its own stream, so that a frame renders the same alone or in its video
    return np.random.default_rng(
        np.random.SeedSequence([plan.seed, zlib.crc32(plan.split.encode()), plan.index, 0x6E6F6973, int(t)])
    )


def render_frames(plan: VideoPlan, frame_indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render frames ``frame_indices`` of a planned video.

    Returns:
        frames: (k, H, W, 3) uint8;
        visible: (n, k, H, W) bool, instance i's visible part (its mask minus everything in front of it);
        full_area: (n, k) int64, pixel count of each instance's own mask clipped to the frame.
    ``min_visible_area`` is not applied here (it needs the whole video for ids; see :func:`render_video`).
    """
    cfg, inst_list = plan.cfg, plan.instances
    H, W, J = cfg.height, cfg.width, max(0, int(cfg.camera_jitter))
    n, k = len(inst_list), len(frame_indices)
    order = plan.order
    frames = np.empty((k, H, W, 3), dtype=np.uint8)
    visible = np.zeros((n, k, H, W), dtype=bool)
    full_area = np.zeros((n, k), dtype=np.int64)
    for j, t in enumerate(frame_indices):
        dx, dy = plan.camera[t]
        img = plan.background[J + dy : J + dy + H, J + dx : J + dx + W].copy()
        full = np.zeros((n, H, W), dtype=bool)
        for i in order:
            inst = inst_list[i]
            (y0, y1, x0, x1), m, u, v = rasterize(
                inst.shape, inst.cx[t] - dx, inst.cy[t] - dy, inst.radius[t], inst.angle[t], H, W
            )
            if not m.any():
                continue
            img[y0:y1, x0:x1][m] = texture_colors(inst.appearance, u[m], v[m])
            full[i, y0:y1, x0:x1] = m
        covered = np.zeros((H, W), dtype=bool)
        for i in reversed(order):  # near to far: what is in front is already covered
            visible[i, j] = full[i] & ~covered
            covered |= full[i]
        full_area[:, j] = full.reshape(n, -1).sum(1)
        img += cfg.noise * _frame_rng(plan, t).standard_normal(img.shape, dtype=np.float32)
        frames[j] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return frames, visible, full_area


def render_video(
    preset_or_cfg: str | SynthConfig, seed: int, index: int, split: str = "train"
) -> SyntheticVideo:
    """Render video ``index`` of ``split`` in memory; same arguments -> identical arrays."""
    plan = plan_video(preset_or_cfg, seed, index, split)
    cfg, instances, pairs, T = plan.cfg, plan.instances, plan.pairs, plan.length
    n = len(instances)
    cam = plan.camera
    frames, visible, full_area = render_frames(plan, range(T))

    vis_area = visible.reshape(n, T, -1).sum(-1)
    shown = vis_area >= cfg.min_visible_area
    visible &= shown[:, :, None, None]
    keep = [i for i in range(n) if shown[i].any()]
    new_id = {i: k + 1 for k, i in enumerate(keep)}
    video = SyntheticVideo(
        name=f"{split}_{index:05d}",
        split=split,
        index=index,
        seed=seed,
        frames=frames,
        masks={},
        categories={},
        appearances={},
        depth={},
        full_area={},
        occluded_fraction={},
        occlusion={},
    )
    for i in keep:
        k = new_id[i]
        frac = np.where(shown[i], 1.0 - vis_area[i] / np.maximum(full_area[i], 1), np.nan)
        video.masks[k] = visible[i]
        video.categories[k] = cfg.shapes.index(instances[i].shape) + 1
        video.appearances[k] = instances[i].appearance
        video.depth[k] = instances[i].depth
        video.full_area[k] = full_area[i]
        video.occluded_fraction[k] = frac
        video.occlusion[k] = [_occlusion_label(f) if s else None for f, s in zip(frac, shown[i], strict=True)]
        inst = instances[i]
        video.centers[k] = np.stack([inst.cx, inst.cy], 1) - cam  # image coordinates: the camera moved by cam
        video.radii[k], video.angles[k] = inst.radius, inst.angle
        # fully hidden while (at least partly) inside the frame, and re-appearance afterwards
        for t0, t1 in _runs(~shown[i] & (full_area[i] >= cfg.min_visible_area)):
            video.events.append(
                {
                    "kind": "full_occlusion",
                    "instance": k,
                    "start": t0,
                    "end": t1,
                    "reappears": bool(shown[i, t1 + 1 :].any()),
                }
            )
        # left the frame and came back
        in_frame = full_area[i] > 0
        seen = np.flatnonzero(in_frame)
        for t0, t1 in _runs(~in_frame[seen[0] : seen[-1] + 1]):
            video.events.append(
                {"kind": "reentry", "instance": k, "left": int(seen[0] + t0), "back": int(seen[0] + t1 + 1)}
            )
    for kind, back, front, t in pairs:
        if back in new_id and front in new_id:
            video.events.append({"kind": kind, "instances": (new_id[back], new_id[front]), "frame": t})
    return video


# ------------------------------------------------------------------------------------------------- writing
def _save_jpeg(frame: np.ndarray, path: Path, quality: int) -> None:
    # fixed quality and chroma subsampling (4:4:4 keeps small textures): Pillow's encoder is deterministic
    Image.fromarray(frame).save(path, format="JPEG", quality=quality, subsampling=0)


def video_annotations(video: SyntheticVideo, video_id: int, first_ann_id: int, occlusion_labels: bool):
    """The YouTube-VIS ``videos`` entry and ``annotations`` entries (ids from ``first_ann_id``) of a video."""
    T = video.length
    entry = {
        "id": video_id,
        "width": video.width,
        "height": video.height,
        "length": T,
        "file_names": [f"{video.name}/{t:05d}.jpg" for t in range(T)],
    }
    anns = []
    for k, inst_id in enumerate(sorted(video.masks)):
        masks = video.masks[inst_id]
        rles = masks_to_rles(masks)
        present = masks.reshape(T, -1).any(1)
        ann = {
            "id": first_ann_id + k,
            "video_id": video_id,
            "category_id": video.categories[inst_id],
            "iscrowd": 0,
            "length": 1,
            "segmentations": [r if p else None for r, p in zip(rles, present, strict=True)],
            "areas": [
                int(a) if p else None for a, p in zip(masks.reshape(T, -1).sum(1), present, strict=True)
            ],
            "bboxes": [rle_bbox(r) if p else None for r, p in zip(rles, present, strict=True)],
        }
        if occlusion_labels:
            ann["occlusion"] = list(video.occlusion[inst_id])
        anns.append(ann)
    return entry, anns


def _render_and_write(args):
    """Worker: render one video, write its frames under ``image_dir``; returns (videos entry, annotations)."""
    cfg, seed, split, index, image_dir = args
    video = render_video(cfg, seed, index, split)
    vdir = Path(image_dir) / video.name
    vdir.mkdir(parents=True, exist_ok=True)
    for t in range(video.length):
        _save_jpeg(video.frames[t], vdir / f"{t:05d}.jpg", cfg.jpeg_quality)
    return video_annotations(video, index + 1, 0, cfg.occlusion_labels)


def dataset_info(cfg: SynthConfig, split: str, seed: int) -> dict:
    return {
        "description": f"vis_core synthetic VIS, preset '{cfg.preset}', split '{split}' (not real data)",
        "version": "1.0",
        "seed": int(seed),
        "config": dataclasses.asdict(cfg),
    }


def _map(fn, jobs, workers: int, desc: str):
    from tqdm import tqdm

    if workers <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, leave=False, disable=len(jobs) < 8)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, jobs), total=len(jobs), desc=desc, leave=False))


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_split(
    out_dir: str | os.PathLike, cfg: SynthConfig, split: str, num_videos: int, seed: int, workers: int = 1
) -> Path:
    """Write ``out_dir/<split>/JPEGImages/...`` and ``out_dir/<split>/instances.json``; returns the json path.

    Everything is written into a hidden temp directory first and renamed into place at the end, so an
    interrupted run leaves no half-written split behind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{split}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        image_dir = tmp / "JPEGImages"
        image_dir.mkdir(parents=True)
        jobs = [(cfg, seed, split, i, str(image_dir)) for i in range(num_videos)]
        results = _map(_render_and_write, jobs, workers, f"synth {cfg.preset}/{split}")
        videos, annotations = [], []
        for entry, anns in results:
            videos.append(entry)
            for ann in anns:
                ann["id"] = len(annotations) + 1
                annotations.append(ann)
        data = {
            "info": dataset_info(cfg, split, seed),
            "licenses": [],
            "videos": videos,
            "categories": categories(cfg.shapes),
            "annotations": annotations,
        }
        save_json(data, tmp / "instances.json")
        _replace_dir(tmp, out_dir / split)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / split / "instances.json"


def _coco_worker(args):
    cfg, seed, index, image_dir = args
    video = render_video(cfg, seed, index, "coco")
    name = f"{index:06d}.jpg"
    _save_jpeg(video.frames[0], Path(image_dir) / name, cfg.jpeg_quality)
    image = {"id": index + 1, "file_name": name, "height": video.height, "width": video.width}
    anns = []
    for inst_id in sorted(video.masks):
        rle = masks_to_rles(video.masks[inst_id][:1])[0]
        anns.append(
            {
                "image_id": index + 1,
                "category_id": video.categories[inst_id],
                "segmentation": rle,
                "area": int(video.masks[inst_id][0].sum()),
                "bbox": rle_bbox(rle),
                "iscrowd": 0,
            }
        )
    return image, anns


def write_coco(
    out_dir: str | os.PathLike,
    cfg: SynthConfig,
    num_images: int,
    seed: int,
    workers: int = 1,
    subdir: str = "coco",
) -> Path:
    """A COCO-format instance set of single synthetic frames (for the pseudo-video path):
    ``out_dir/<subdir>/images/<id>.jpg`` and ``out_dir/<subdir>/instances.json``; returns the json path.

    Images are the first frame of single-frame videos drawn with the same shapes and looks, without scripted
    twin/hider pairs (a still image cannot show them)."""
    cfg = dataclasses.replace(cfg, frames=(1, 1), twin_prob=0.0, hider_prob=0.0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{subdir}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "images").mkdir(parents=True)
        jobs = [(cfg, seed, i, str(tmp / "images")) for i in range(num_images)]
        images, annotations = [], []
        for image, anns in _map(_coco_worker, jobs, workers, f"synth {cfg.preset}/coco"):
            images.append(image)
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, **ann})
        data = {
            "info": dataset_info(cfg, subdir, seed),
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories(cfg.shapes),
        }
        save_json(data, tmp / "instances.json")
        _replace_dir(tmp, out_dir / subdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / subdir / "instances.json"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def generate(
    out_dir: str | os.PathLike,
    preset: str | SynthConfig = "ytvis",
    seed: int = 0,
    *,
    train_videos: int | None = None,
    valid_videos: int | None = None,
    coco_images: int = 0,
    workers: int = 1,
    **overrides,
) -> dict:
    """Generate a full synthetic dataset (train + valid splits, optional COCO image set).

    Returns a summary: per split the json path, number of videos/annotations/frames, bytes and seconds.
    """
    cfg = make_config(preset, **overrides)
    counts = {
        "train": cfg.train_videos if train_videos is None else train_videos,
        "valid": cfg.valid_videos if valid_videos is None else valid_videos,
    }
    summary: dict = {"preset": cfg.preset, "seed": seed, "out": str(out_dir), "splits": {}}
    for split, num in counts.items():
        if num <= 0:
            continue
        t0 = time.perf_counter()
        path = write_split(out_dir, cfg, split, num, seed, workers)
        summary["splits"][split] = _split_summary(path, time.perf_counter() - t0)
    if coco_images > 0:
        t0 = time.perf_counter()
        path = write_coco(out_dir, cfg, coco_images, seed, workers)
        summary["splits"]["coco"] = _split_summary(path, time.perf_counter() - t0)
    return summary


def _split_summary(json_path: Path, seconds: float) -> dict:
    from vis_core.data.ytvis import load_json

    data = load_json(json_path)
    videos = data.get("videos", data.get("images", []))
    return {
        "json": str(json_path),
        "videos": len(videos),
        "frames": sum(v.get("length", 1) for v in videos),
        "annotations": len(data["annotations"]),
        "bytes": _dir_size(json_path.parent),
        "seconds": round(seconds, 3),
    }
