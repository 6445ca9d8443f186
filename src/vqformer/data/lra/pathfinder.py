"""Pathfinder / Path-X: a procedural generator with the LRA parameter tables, seeded per image, and the
release-file reader.

Spec: ``docs/longvq.md`` §4.3 (``drewlinsley/pathfinder`` ``snakes2.py``: two target snakes
whose tails are ``seed_distance`` apart, grown paddle by paddle with a continuity prior and an occupancy
penalty; distractor snakes; optional single paddles; circle markers at the seed end of snake a and at the far
end of a (label 1) or of the other snake (label 0); anti-aliased rendering, contrast, min-max rescaled to 8 bit)
and §4.2 (hard = contour length 14; 32×32 → 1,024 pixels, Path-X 128×128 → 16,384; split 80/10/10).

This is a re-implementation from that description, not a port: paddles are drawn as anti-aliased segments
(analytic coverage on a canvas ``antialias`` times finer, box-downsampled instead of Lanczos); candidate heads
lie on the circle of radius ``paddle_length + margin`` around the pivot, weighted by
``free(head) · max(cos(min(|Δθ|·continuity, π/2)), 0)²``; a paddle that overlaps earlier strokes is retried.
The data are statistically, not bitwise, like the release (which the original code could not reproduce
either). Each image draws from ``numpy.random.default_rng([seed, index])``, so any subset regenerates alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ...progress import progress
from ..files import DataUnavailableError


@dataclass(frozen=True)
class PathfinderParams:
    window_size: int = 32
    padding: int = 1
    antialias: int = 2
    paddle_margin_list: tuple = (1,)
    seed_distance: float = 7
    marker_radius: float = 1.5
    paddle_length: float = 2
    paddle_thickness: float = 0.5
    continuity: float = 1.0
    contour_length: int = 14
    distractor_length: int = 4
    num_distractor_snakes: int = 5
    snake_contrast: float = 2.0
    paddle_contrast: float = 0.75
    use_single_paddles: bool = True
    max_paddle_retrial: int = 4
    max_target_contour_retrial: int = 4
    max_distractor_contour_retrial: int = 2


# §4.3's table (hard split). Fractions of the original (14/3, 35/(14/3)) are truncated to integers.
PRESETS = {
    "pathfinder32": PathfinderParams(),
    "pathfinder64": PathfinderParams(window_size=64, seed_distance=12, marker_radius=2.5, paddle_length=5,
                                     paddle_thickness=1, continuity=1.8, num_distractor_snakes=4,
                                     snake_contrast=0.8, paddle_contrast=1.0),
    "pathx": PathfinderParams(window_size=128, paddle_margin_list=(2, 3), seed_distance=20, marker_radius=3,
                              paddle_length=5, paddle_thickness=1.5, continuity=1.8, num_distractor_snakes=7,
                              snake_contrast=0.9, paddle_contrast=1.0),
}


@dataclass
class _Canvas:
    size: int
    aa: int
    img: np.ndarray = field(init=False)       # fine canvas, stroke intensity
    occ: np.ndarray = field(init=False)       # fine canvas, occupied by any stroke

    def __post_init__(self):
        n = self.size * self.aa
        self.img = np.zeros((n, n), np.float32)
        self.occ = np.zeros((n, n), bool)


def _segment(n: int, a, b, width: float):
    """Coverage in [0,1] of a segment a->b (fine-pixel coords) of the given width: (slices, patch)."""
    r = width / 2 + 1
    y0, y1 = int(max(0, math.floor(min(a[0], b[0]) - r))), int(min(n, math.ceil(max(a[0], b[0]) + r) + 1))
    x0, x1 = int(max(0, math.floor(min(a[1], b[1]) - r))), int(min(n, math.ceil(max(a[1], b[1]) + r) + 1))
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    d = np.array(b, np.float32) - np.array(a, np.float32)
    t = np.clip(((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    dist = np.hypot(yy - (a[0] + t * d[0]), xx - (a[1] + t * d[1]))
    return (slice(y0, y1), slice(x0, x1)), np.clip(width / 2 + 0.5 - dist, 0, 1)


class _Generator:
    def __init__(self, p: PathfinderParams, rng: np.random.Generator):
        self.p, self.rng = p, rng
        self.c = _Canvas(p.window_size, p.antialias)
        self.margin = float(rng.choice(p.paddle_margin_list))

    # all geometry in coarse pixels; the canvas is antialias times finer
    def inside(self, pt, pad=None) -> bool:
        pad = self.p.padding if pad is None else pad
        return pad <= pt[0] < self.p.window_size - pad and pad <= pt[1] < self.p.window_size - pad

    def free(self, pt, radius: float) -> bool:
        return bool(self.free_many(np.asarray([pt], np.float64), radius)[0])

    def free_many(self, pts: np.ndarray, radius: float) -> np.ndarray:
        """No occupied fine pixel within ``radius`` of each point [n,2] (points off the canvas are not free)."""
        aa, n = self.p.antialias, self.c.occ.shape[0]
        r = radius * aa
        k = int(math.ceil(r))
        dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
        centre = np.floor(pts * aa).astype(int)
        # fine pixel (i, j) has its centre at (i + 0.5, j + 0.5)
        off = (dy + 0.5 + centre[:, :1, None] - pts[:, :1, None] * aa) ** 2 \
            + (dx + 0.5 + centre[:, 1:, None] - pts[:, 1:, None] * aa) ** 2 <= r * r     # [n, 2k+1, 2k+1]
        yy, xx = centre[:, 0, None, None] + dy, centre[:, 1, None, None] + dx
        on = (yy >= 0) & (yy < n) & (xx >= 0) & (xx < n)
        hit = self.c.occ[yy.clip(0, n - 1), xx.clip(0, n - 1)] & on & off
        return ~hit.reshape(len(pts), -1).any(1) & on.reshape(len(pts), -1).all(1)

    def stroke(self, a, b):
        aa = self.p.antialias
        return _segment(self.c.occ.shape[0], (a[0] * aa, a[1] * aa), (b[0] * aa, b[1] * aa),
                        max(1.0, self.p.paddle_thickness * aa))

    def overlaps(self, seg) -> bool:
        return seg is None or bool((self.c.occ[seg[0]] & (seg[1] > 0.5)).any())

    def commit(self, segs, contrast: float):
        for sl, cov in segs:
            self.c.img[sl] = np.maximum(self.c.img[sl], cov * contrast)
            self.c.occ[sl] |= cov > 0.05

    def grow(self, tail, theta: float, n_paddles: int):
        """A snake of ``n_paddles`` paddles starting at ``tail`` (None on failure); returns (segs, end)."""
        p, L, m = self.p, self.p.paddle_length, self.margin
        head = (tail[0] + L * math.sin(theta), tail[1] + L * math.cos(theta))
        if not (self.inside(tail) and self.inside(head)):
            return None
        segs = [self.stroke(tail, head)]
        if self.overlaps(segs[0]):
            return None
        occ = self.c.occ.copy()
        self.commit(segs[-1:], 0.0)                # occupy while growing (contrast applied by the caller)
        try:
            for _ in range(n_paddles - 1):
                pivot = (head[0] + m * math.sin(theta), head[1] + m * math.cos(theta))
                n = max(8, int(2 * math.pi * (L + m)))
                angles = self.rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(n) / n
                diff = np.abs((angles - theta + math.pi) % (2 * math.pi) - math.pi)
                w = np.maximum(np.cos(np.minimum(diff * p.continuity, math.pi / 2)), 0) ** 2
                ends = np.stack([pivot[0] + L * np.sin(angles), pivot[1] + L * np.cos(angles)], 1)
                pad = self.p.padding
                inside = ((ends >= pad) & (ends < self.p.window_size - pad)).all(1)
                w = w * (inside & self.free_many(ends, m))
                placed = False
                for _ in range(p.max_paddle_retrial):
                    if w.sum() <= 0:
                        break
                    k = self.rng.choice(n, p=w / w.sum())
                    seg = self.stroke(pivot, tuple(ends[k]))
                    if not self.overlaps(seg):
                        segs.append(seg)
                        self.commit([seg], 0.0)
                        theta, head, placed = float(angles[k]), tuple(ends[k]), True
                        break
                    w[k] = 0
                if not placed:
                    return None
            return segs, head
        finally:
            self.c.occ = occ                       # the caller commits the whole snake or nothing

    def random_free_point(self, pad: float):
        for _ in range(50):
            pt = tuple(self.rng.uniform(pad, self.p.window_size - pad, 2))
            if self.free(pt, self.margin):
                return pt
        return None

    def targets(self):
        p = self.p
        for _ in range(p.max_target_contour_retrial * 10):
            t1 = self.random_free_point(p.padding + 1)
            if t1 is None:
                continue
            phi = math.radians(self.rng.integers(-180, 180))
            t2 = (t1[0] + p.seed_distance * math.sin(phi), t1[1] + p.seed_distance * math.cos(phi))
            if not self.inside(t2):
                continue
            s1 = self.grow(t1, math.radians(self.rng.integers(-180, 180)), p.contour_length)
            if s1 is None:
                continue
            self.commit(s1[0], 0.0)
            s2 = self.grow(t2, math.radians(self.rng.integers(-180, 180)), p.contour_length)
            if s2 is None:
                self.c.occ[:] = False
                continue
            self.commit(s2[0], 0.0)
            return (t1, s1), (t2, s2)
        return None

    def image(self, label: int) -> np.ndarray | None:
        p, contrast = self.p, self.p.snake_contrast * self.p.paddle_contrast
        found = self.targets()
        if found is None:
            return None
        for _, (segs, _) in found:
            self.commit(segs, contrast)
        for _ in range(p.num_distractor_snakes):
            for _ in range(p.max_distractor_contour_retrial):
                start = self.random_free_point(p.padding + 1)
                grown = start and self.grow(start, self.rng.uniform(-math.pi, math.pi), p.distractor_length)
                if grown:
                    self.commit(grown[0], contrast)
                    break
        if p.use_single_paddles:
            m = self.margin
            n_single = int(150 / ((7.5 + 13 * m + 4 * m * m) / 123.5)) - 2 * p.contour_length \
                - p.num_distractor_snakes * p.distractor_length
            n_single = min(n_single, int(0.05 * p.window_size ** 2))   # the original stops once the canvas is full
            for _ in range(max(0, n_single)):
                start = self.random_free_point(p.padding + 1)
                grown = start and self.grow(start, self.rng.uniform(-math.pi, math.pi), 1)
                if grown:
                    self.commit(grown[0], contrast)
        a = int(self.rng.integers(0, 2))
        (tail_a, (_, end_a)), (tail_b, (_, end_b)) = found if a == 0 else found[::-1]
        for centre in (tail_a, end_a if label == 1 else end_b):
            self.disc(centre, p.marker_radius, contrast)
        aa, n = p.antialias, p.window_size
        img = np.clip(self.c.img, 0, None).reshape(n, aa, n, aa).mean((1, 3))
        return np.round(255 * img / max(float(img.max()), 1e-6)).astype(np.uint8)   # min-max to 8 bit

    def disc(self, centre, radius: float, contrast: float):
        aa, n = self.p.antialias, self.c.img.shape[0]
        yy, xx = np.mgrid[0:n, 0:n] + 0.5
        d = np.hypot(yy - centre[0] * aa, xx - centre[1] * aa)
        self.c.img = np.maximum(self.c.img, np.clip(radius * aa + 0.5 - d, 0, 1) * contrast)


def generate_image(params: PathfinderParams, seed: int, index: int) -> tuple[np.ndarray, int]:
    """One image [size, size] uint8 and its label (1: the markers are on one path), from (seed, index)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(0, 2))
    for _ in range(100):
        img = _Generator(params, rng).image(label)
        if img is not None:
            return img, label
    raise RuntimeError(f"pathfinder: no image after 100 attempts with {params}")


def generate(params: PathfinderParams, n: int, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # About 6 hours for the LRA's 200,000 images of Path-X on one core (docs/longvq.md §4.3): show how far it is.
    indices = progress(range(start, start + n), desc=f"pathfinder{params.window_size} images", unit="img")
    imgs, labels = zip(*(generate_image(params, seed, i) for i in indices))
    return np.stack(imgs).reshape(n, -1), np.asarray(labels, np.int64)


def release_dir(root, task: str) -> Path:
    folder = Path(root) / "lra" / "raw" / "lra_release" / ("pathfinder32" if task == "pathfinder32" else "pathfinder128")
    hard = folder / "curv_contour_length_14"
    if not (hard / "metadata").is_dir():
        raise DataUnavailableError(
            f"{task} release files are not available: download https://storage.googleapis.com/long-range-arena/"
            f"lra_release.gz, extract it, and place lra_release/ under {Path(root) / 'lra' / 'raw'} "
            f"(expected {hard}/metadata/*.npy and {hard}/imgs/)")
    return hard


def read_release(root, task: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The hard split's PNGs and labels (metadata rows ``<subpath> <file> <idx> <label> ...``, files in numeric order)."""
    from PIL import Image
    hard = release_dir(root, task)
    imgs, labels = [], []
    for meta in sorted((hard / "metadata").glob("*.npy"), key=lambda p: int(p.stem)):
        for line in meta.read_text().splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            with Image.open(hard / parts[0] / parts[1]) as im:
                imgs.append(np.asarray(im.convert("L"), np.uint8).reshape(-1))
            labels.append(int(parts[3]))
            if limit and len(labels) >= limit:
                return np.stack(imgs), np.asarray(labels, np.int64)
    return np.stack(imgs), np.asarray(labels, np.int64)


def build_pathfinder(task: str, root, source: str, gen: dict) -> dict:
    """Splits 80/10/10 in order (generated) or by a seed-42 permutation (release, as S4 and MEGA)."""
    gen = dict(gen)
    n_train, n_val, n_test = (int(gen.pop(k, d)) for k, d in (("n_train", 160_000), ("n_val", 20_000),
                                                               ("n_test", 20_000)))
    seed = int(gen.pop("seed", 0))
    if source == "generated":
        params = replace(PRESETS[task], **{k: tuple(v) if isinstance(v, list) else v for k, v in gen.items()})
        x, y = generate(params, n_train + n_val + n_test, seed)
    else:
        x, y = read_release(root, task)
        perm = np.random.default_rng(42).permutation(len(y))
        x, y = x[perm], y[perm]
        n_train, n_val = int(0.8 * len(y)), int(0.1 * len(y))
        n_test = len(y) - n_train - n_val
    lengths = np.full(len(y), x.shape[1], np.int32)
    cuts = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val),
            "test": slice(n_train + n_val, n_train + n_val + n_test)}
    return {s: {"inputs": x[c], "lengths": lengths[c], "labels": y[c]} for s, c in cuts.items()}


__all__ = ["PRESETS", "PathfinderParams", "build_pathfinder", "generate", "generate_image", "read_release", "asdict"]
