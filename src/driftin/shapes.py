"""Procedural labelled shapes: the offline default dataset, so the pipeline runs with no downloads.

One anti-aliased shape per image, drawn from its signed-distance function (SDF), with random colour,
size, position, rotation and per-shape proportions, over a solid, gradient or textured background.
Foreground and background luma are kept at least `_MIN_CONTRAST` apart so every shape is visible.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "ring", "plus", "crescent", "heart", "arrow", "hexagon",
)

# Samples per RNG stream. Chunk k draws from default_rng([seed, k]) with this fixed size, so sample i
# depends only on (seed, i): the first 100 of a 1000-draw equal a 100-draw. Shape and colour
# parameters are drawn before any per-pixel noise, so they do not depend on image_size either.
_CHUNK = 100
_MIN_CONTRAST = 0.25  # minimum |luma(fg) - luma(bg)| over the whole background, in [0, 1] units
_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luma weights
_TEXTURE_GRID = 5  # texture = random 5x5 grid upsampled, so it looks the same at every resolution


def _box(px: np.ndarray, py: np.ndarray, bx: np.ndarray | float, by: np.ndarray | float) -> np.ndarray:
    """Exact SDF of an axis-aligned box with half-sizes (bx, by)."""
    qx, qy = np.abs(px) - bx, np.abs(py) - by
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _star(px: np.ndarray, py: np.ndarray, r: float, n: int, m: np.ndarray | float) -> np.ndarray:
    """Exact SDF of an n-pointed star of outer radius r (Quilez's sdStar); m = 2 gives a regular n-gon."""
    an, en = math.pi / n, math.pi / np.asarray(m, dtype=px.dtype)
    ecx, ecy = np.cos(en), np.sin(en)
    # Fold the plane into one half-sector, where the boundary is a single segment.
    bn = np.mod(np.arctan2(px, py), 2 * an) - an
    length = np.hypot(px, py)
    qx = length * np.cos(bn) - r * math.cos(an)
    qy = length * np.abs(np.sin(bn)) - r * math.sin(an)
    h = np.clip(-(qx * ecx + qy * ecy), 0, r * math.sin(an) / ecy)
    qx, qy = qx + ecx * h, qy + ecy * h
    return np.hypot(qx, qy) * np.sign(qx)


def _heart(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Exact SDF of Quilez's heart: tip at (0, 0), lobes up to y = 1.1."""
    px = np.abs(px)
    lobe = np.hypot(px - 0.25, py - 0.75) - math.sqrt(2) / 4
    k = 0.5 * np.maximum(px + py, 0)
    body = np.sqrt(np.minimum(px**2 + (py - 1) ** 2, (px - k) ** 2 + (py - k) ** 2)) * np.sign(px - py)
    return np.where(py + px > 1, lobe, body)


# Each SDF takes local coordinates (shape radius ~1) and a per-sample proportion u in [0, 1) that
# varies ring thickness, star depth, arm width, etc. All fit in the unit disc (heart/arrow: radius 1.05).
def _sd_circle(px, py, u):
    return np.hypot(px, py) - (0.85 + 0.1 * u)


def _sd_square(px, py, u):
    return _star(px, py, 0.95, 4, 2.0)


def _sd_triangle(px, py, u):
    return _star(px, py, 1.0, 3, 2.0)


def _sd_star(px, py, u):
    return _star(px, py, 1.0, 5, 2.9 + 0.5 * u)


def _sd_ring(px, py, u):
    half_width = 0.16 + 0.08 * u
    return np.abs(np.hypot(px, py) - (0.95 - half_width)) - half_width


def _sd_plus(px, py, u):
    arm = 0.24 + 0.1 * u
    return np.minimum(_box(px, py, 0.95, arm), _box(px, py, arm, 0.95))


def _sd_crescent(px, py, u):
    # Disc minus an offset disc; the offset sets how fat the crescent is.
    return np.maximum(np.hypot(px, py) - 0.95, 0.85 - np.hypot(px - (0.4 + 0.2 * u), py))


def _sd_heart(px, py, u):
    # In Quilez's units the heart fits a disc of radius ~0.71 around (0, 0.5): map the unit disc there.
    scale = 0.71
    return _heart(px * scale, py * scale + 0.5) / scale


def _sd_arrow(px, py, u):
    shaft = _box(px + 0.35, py, 0.65, 0.14 + 0.06 * u)
    # Head: triangle with tip (1, 0) and base x = 0.05, |y| <= 0.6, as the intersection of half-planes.
    nx, ny = 0.6 / math.hypot(0.6, 0.95), 0.95 / math.hypot(0.6, 0.95)
    head = np.maximum(0.05 - px, (px - 1) * nx + np.abs(py) * ny)
    return np.minimum(shaft, head)


def _sd_hexagon(px, py, u):
    return _star(px, py, 0.95, 6, 2.0)


_SDFS = (
    _sd_circle, _sd_square, _sd_triangle, _sd_star, _sd_ring,
    _sd_plus, _sd_crescent, _sd_heart, _sd_arrow, _sd_hexagon,
)


def _with_luma(rgb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Shift colours rgb [n, 3] to luma `target` [n] by mixing with white or black (keeps the hue)."""
    luma = rgb @ _LUMA
    target = np.clip(target, 0, 1)
    # Luma is linear in RGB, so mixing with white/black moves it linearly and the mix factor is exact.
    lighter = rgb + (1 - rgb) * ((target - luma) / np.maximum(1 - luma, 1e-6))[:, None]
    darker = rgb * (target / np.maximum(luma, 1e-6))[:, None]
    return np.where((target > luma)[:, None], lighter, darker)


def _upsample_matrix(src: int, dst: int) -> np.ndarray:
    """Bilinear interpolation weights [dst, src] mapping a src-grid to dst pixel centres."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.minimum(np.floor(pos).astype(int), src - 2)
    frac = pos - lo
    weights = np.zeros((dst, src))
    weights[np.arange(dst), lo] = 1 - frac
    weights[np.arange(dst), lo + 1] = frac
    return weights


def _render_chunk(seed: int, chunk: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render _CHUNK samples from stream (seed, chunk) -> (images uint8 [C, S, S, 3], labels int64 [C])."""
    rng = np.random.default_rng([seed, chunk])
    c, s = _CHUNK, image_size
    # Shape parameters (all drawn at fixed size, before anything that depends on image_size).
    labels = rng.permutation(np.arange(c) % len(SHAPE_CLASSES)).astype(np.int64)  # balanced per chunk
    radius = rng.uniform(0.45, 0.8, c)  # shape radius as a fraction of half the image
    centre = rng.uniform(-1, 1, (c, 2)) * (1 - 1.05 * radius)[:, None]  # keeps the shape inside
    angle = rng.uniform(0, 2 * np.pi, c)
    proportion = rng.uniform(0, 1, c)
    # Background: mean luma, gradient half-spread or texture amplitude; its luma stays in [lo, hi].
    bg_mean = rng.uniform(0.05, 0.95, c)
    bg_kind = rng.integers(0, 3, c)  # 0 solid, 1 linear gradient, 2 textured
    spread = np.where(bg_kind == 1, rng.uniform(0.04, 0.12, c), 0.0)
    texture_amp = np.where(bg_kind == 2, rng.uniform(0.04, 0.1, c), 0.0)
    bg_a = _with_luma(rng.uniform(0, 1, (c, 3)), bg_mean - spread)
    bg_b = _with_luma(rng.uniform(0, 1, (c, 3)), bg_mean + spread)
    bg_angle = rng.uniform(0, 2 * np.pi, c)
    texture = rng.uniform(-1, 1, (c, 3, _TEXTURE_GRID, _TEXTURE_GRID)) * texture_amp[:, None, None, None]
    # Foreground on the far side of the background's luma range, so contrast >= _MIN_CONTRAST.
    lo, hi = bg_mean - spread - texture_amp, bg_mean + spread + texture_amp
    u = rng.uniform(0, 1, c)
    fg_luma = np.where(bg_mean < 0.5, 1 - u * (1 - hi - _MIN_CONTRAST), u * (lo - _MIN_CONTRAST))
    fg = _with_luma(rng.uniform(0, 1, (c, 3)), fg_luma)
    grain_sigma = rng.uniform(0, 0.03, c)

    # Pixels: float32 in 0..255 units (half the memory traffic of float64, ample for 8-bit output),
    # channels first so every broadcast runs over contiguous S*S planes rather than 3-long rows.
    f32 = np.float32
    coords = (np.arange(s, dtype=f32) + 0.5) / s * 2 - 1  # pixel centres in [-1, 1]
    y, x = coords[:, None], coords[None, :]  # (S, 1), (1, S)
    # Background: gradient from bg_a to bg_b along bg_angle, plus a smooth upsampled texture.
    ramp = x * f32(np.cos(bg_angle))[:, None, None] + y * f32(np.sin(bg_angle))[:, None, None]  # (C, S, S)
    ramp = ramp * f32(0.5 / np.sqrt(2)) + f32(0.5)  # in [0, 1]
    bg = f32(255 * bg_a)[..., None, None] + f32(255 * (bg_b - bg_a))[..., None, None] * ramp[:, None]
    up = f32(_upsample_matrix(_TEXTURE_GRID, s))  # (S, G)
    bg += up @ f32(255 * texture) @ up.T  # (C, 3, S, S)

    # Signed distance in pixels [C, S, S], one shape class at a time.
    dist = np.empty((c, s, s), dtype=f32)
    for k, sdf in enumerate(_SDFS):
        idx = np.flatnonzero(labels == k)
        rad, cos, sin = (f32(v[idx, None, None]) for v in (radius, np.cos(angle), np.sin(angle)))
        dx, dy = x - f32(centre[idx, 0, None, None]), y - f32(centre[idx, 1, None, None])  # (n, S, S)
        px, py = (cos * dx + sin * dy) / rad, (cos * dy - sin * dx) / rad  # rotate by -angle
        dist[idx] = sdf(px, py, f32(proportion[idx, None, None])) * (rad * f32(s / 2))
    # Coverage of a pixel by the shape, linear over one pixel across the edge: anti-aliasing.
    alpha = np.clip(f32(0.5) - dist, 0, 1)[:, None]  # (C, 1, S, S)

    image = bg + (f32(255 * fg)[..., None, None] - bg) * alpha  # (C, 3, S, S)
    # Mild monochrome grain; + 0.5 so that the truncating cast below rounds.
    image += rng.standard_normal((c, 1, s, s), dtype=f32) * f32(255 * grain_sigma)[:, None, None, None] + 0.5
    return np.clip(image, 0, 255, out=image).transpose(0, 2, 3, 1).astype(np.uint8), labels  # NHWC


def render_shapes(num: int, *, image_size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render `num` labelled shapes -> (images uint8 [N, H, W, 3], labels int64 [N]).

    Deterministic in `seed`; sample i does not depend on `num` (see `_CHUNK`).
    """
    if num < 0 or image_size < 4 or seed < 0:
        raise ValueError(f"need num >= 0, image_size >= 4, seed >= 0; got {num}, {image_size}, {seed}")
    images = np.empty((num, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(num, dtype=np.int64)
    starts = range(0, num, _CHUNK)
    # Chunks are independent streams and numpy releases the GIL in array ops, so threads scale.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        chunks = pool.map(lambda k: _render_chunk(seed, k, image_size), range(len(starts)))
        for start, (chunk_images, chunk_labels) in zip(starts, chunks):
            n = min(_CHUNK, num - start)
            images[start : start + n], labels[start : start + n] = chunk_images[:n], chunk_labels[:n]
    return images, labels
