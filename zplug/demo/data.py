"""The demo task: coloured shapes on textured, noisy backgrounds, generated procedurally.

Every image holds exactly one shape; its class is the shape's kind and its mask (the pixels
the shape covers, even partly) is known, so a heatmap can be checked against the object.
Generation uses only numpy and is deterministic for a given seed.
"""

from __future__ import annotations

from zplug._lazy import lazy_module

np = lazy_module("numpy")  # imported when images are generated: the class names need nothing

#: The class names, in label order.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Height and width of the generated images.
IMAGE_SIZE = 32

_SUPERSAMPLE = 4
_MIN_CONTRAST = 0.45


def _rotated(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * u + sin * v, -sin * u + cos * v


def _inside(kind: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Return whether the points ``(u, v)`` (relative to the centre, unrotated) lie in the shape."""
    if kind == "circle":
        return u**2 + v**2 <= radius**2
    if kind == "square":
        half = 0.8 * radius
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == "triangle":  # equilateral, circumradius ``radius``; the inradius is half of it
        inside = np.ones(u.shape, dtype=bool)
        for normal in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * np.cos(normal) + v * np.sin(normal) <= radius / 2
        return inside
    if kind == "cross":
        arm = 0.3 * radius
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    raise ValueError(f"unknown shape '{kind}' (known: {', '.join(CLASSES)})")


def _coverage(kind: str, size: int, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Return the fraction of each pixel that the shape covers (anti-aliasing by supersampling)."""
    steps = (np.arange(size * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    v, u = np.meshgrid(steps - centre[1], steps - centre[0], indexing="ij")
    inside = _inside(kind, *_rotated(u, v, angle), radius).astype(np.float32)
    return inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a textured background (H, W, 3) and its base colour."""
    base = rng.uniform(0.25, 0.75) + rng.uniform(-0.1, 0.1, size=3)
    tint = rng.uniform(0.5, 1.0, size=3)
    amplitude = rng.uniform(0.06, 0.18)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    texture = rng.integers(3)
    if texture == 0:  # stripes
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.3, 1.2), rng.uniform(0, 2 * np.pi)
        pattern = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    elif texture == 1:  # checks
        freq, phase = rng.uniform(0.3, 0.9, size=2), rng.uniform(0, 2 * np.pi, size=2)
        pattern = np.sin(freq[0] * xx + phase[0]) * np.sin(freq[1] * yy + phase[1]) * 1.5
    else:  # smooth blobs: bilinear upsampling of a coarse random grid
        coarse = rng.uniform(-1, 1, size=(5, 5))
        pos = np.linspace(0, 4, size)
        lo = np.minimum(pos.astype(int), 3)
        frac = pos - lo
        rows = coarse[lo] * (1 - frac)[:, None] + coarse[lo + 1] * frac[:, None]
        pattern = rows[:, lo] * (1 - frac)[None, :] + rows[:, lo + 1] * frac[None, :]
    image = base[None, None, :] + amplitude * pattern[:, :, None] * tint[None, None, :]
    return image, base


def _shape_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    while True:
        colour = rng.uniform(0.0, 1.0, size=3)
        if np.linalg.norm(colour - base) >= _MIN_CONTRAST:
            return colour


def generate_numpy(n: int, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` samples as numpy arrays.

    Parameters
    ----------
    n : int
        Number of samples.
    seed : int
        Seed of the random generator; the same seed gives the same samples.
    size : int
        Height and width in pixels.

    Returns
    -------
    images : numpy.ndarray
        float32, shape (n, 3, size, size), values in [0, 1].
    labels : numpy.ndarray
        int64, shape (n,), indices into :data:`CLASSES`.
    masks : numpy.ndarray
        bool, shape (n, size, size): the pixels the shape covers (at least partly).
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = rng.integers(len(CLASSES), size=n).astype(np.int64)
    masks = np.empty((n, size, size), dtype=bool)
    for index in range(n):
        kind = CLASSES[labels[index]]
        radius = rng.uniform(0.19, 0.34) * size
        margin = radius + 1
        centre = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
        angle = rng.uniform(0, 2 * np.pi)
        background, base = _background(rng, size)
        alpha = _coverage(kind, size, centre, radius, angle)[:, :, None]
        image = background * (1 - alpha) + _shape_colour(rng, base)[None, None, :] * alpha
        image += rng.normal(0.0, rng.uniform(0.02, 0.06), size=image.shape)
        images[index] = np.clip(image, 0.0, 1.0).transpose(2, 0, 1)
        masks[index] = alpha[:, :, 0] > 0
    return images, labels, masks


def generate(n: int, seed: int = 0, size: int = IMAGE_SIZE):
    """Generate ``n`` samples as torch tensors: ``images, labels, masks``.

    See :func:`generate_numpy` for the shapes and types; ``images`` is a float32 tensor in
    [0, 1] (the model's input range), ``labels`` int64 and ``masks`` bool.
    """
    import torch

    images, labels, masks = generate_numpy(n, seed, size)
    return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(masks)


__all__ = ("CLASSES", "IMAGE_SIZE", "generate", "generate_numpy")
