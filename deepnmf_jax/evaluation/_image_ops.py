"""Image operations that CIFAR-10-C's corruptions are made of, with numpy, scipy and Pillow where the
published code (``hendrycks/robustness:ImageNet-C/create_c/make_cifar_c.py``) calls OpenCV,
scikit-image and ImageMagick. Each says what it stands for; images are float (H, W, C) in [0, 1]."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

GRAY = (0.299, 0.587, 0.114)  # OpenCV's RGB2GRAY


def gaussian(image: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0):
    """scikit-image's ``gaussian`` (multichannel): a Gaussian filter over H and W only."""
    sigmas = (sigma, sigma, 0) if image.ndim == 3 else (sigma, sigma)
    return ndimage.gaussian_filter(image, sigmas, mode=mode, truncate=truncate)


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    """OpenCV's 1-D Gaussian kernel of ``size`` taps (``getGaussianKernel``), summing to 1."""
    x = np.arange(size) - (size - 1) / 2
    taps = np.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """The published ``disk``: an aliased disk of ``radius`` normalised to sum 1, smoothed by a
    3x3 Gaussian of ``alias_blur`` (OpenCV's ``GaussianBlur``, border reflect-101)."""
    half = 8 if radius <= 8 else int(radius)
    size = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    aliased = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    aliased /= aliased.sum()
    taps = _gaussian_taps(size, alias_blur)
    blurred = ndimage.correlate1d(aliased, taps, axis=0, mode="mirror")
    return np.asarray(ndimage.correlate1d(blurred, taps, axis=1, mode="mirror"))


def filter2d(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """OpenCV's ``filter2D`` per channel: correlation, border reflect-101."""
    return np.stack(
        [ndimage.correlate(image[..., c], kernel, mode="mirror") for c in range(image.shape[-1])],
        -1,
    )


def clipped_zoom(image: np.ndarray, factor: float) -> np.ndarray:
    """The published ``clipped_zoom``: the centre crop zoomed (bilinear) back to the image's size."""
    h = image.shape[0]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    zoomed = np.asarray(
        ndimage.zoom(image[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
    )
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim : trim + h, trim : trim + h]


def plasma_fractal(rng: np.random.Generator, mapsize: int = 32, wibbledecay: float = 3):
    """The published diamond-square height map in [0, 1] (``mapsize`` a power of two)."""
    maparray = np.zeros((mapsize, mapsize))
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        corner = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corner + np.roll(corner, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        half = stepsize // 2
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(square)
        dr = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        ul = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(lt)
        tt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def motion_blur(image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's ``-motion-blur radius x sigma + angle`` (the published code calls it through
    Wand): a one-sided Gaussian of ``sigma`` along the direction ``angle``, its width chosen as
    ImageMagick chooses it. This follows ``imagecorruptions``' reimplementation; edges repeat the
    border pixel."""
    width = _kernel_width(radius, sigma)
    taps = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    dy, dx = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hypot = math.hypot(dy, dx)
    blurred = np.zeros_like(image, dtype=np.float32)
    for i, tap in enumerate(taps):
        shift_y = -math.ceil(i * dy / hypot - 0.5)
        shift_x = -math.ceil(i * dx / hypot - 0.5)
        if abs(shift_y) >= image.shape[0] or abs(shift_x) >= image.shape[1]:
            break
        blurred += tap * _shift(image, shift_x, shift_y)
    return blurred


def _kernel_width(radius: float, sigma: float) -> int:
    """ImageMagick's width of a 1-D Gaussian kernel: ``2 radius + 1``, or for radius 0 the
    smallest width whose outermost tap is still above the float epsilon."""
    if radius > 0:
        return int(2 * radius + 1)
    width = 5
    while math.exp(-((width // 2) ** 2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma) > 1e-7:
        width += 2
    return width


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The image moved by (dx, dy), the vacated border filled with the edge pixels."""
    h, w = image.shape[:2]
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return image[rows][:, cols]


def rgb_to_gray(image: np.ndarray) -> np.ndarray:
    """OpenCV's RGB2GRAY: (H, W, 3) -> (H, W, 1)."""
    return (image @ np.asarray(GRAY, image.dtype))[..., None]


def png_round_trip(gray: np.ndarray) -> np.ndarray:
    """A single-channel image in [0, 1] stored as an 8-bit PNG and read back (the published code
    hands its snow layer to ImageMagick as a PNG)."""
    buffer = io.BytesIO()
    Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    return np.asarray(Image.open(buffer), np.float32) / 255.0


def affine_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV's ``getAffineTransform``: the 2x3 map taking three (x, y) points to three others."""
    design = np.hstack([source, np.ones((3, 1))])
    return np.linalg.solve(design, target).T


def warp_affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """OpenCV's ``warpAffine`` (bilinear, border reflect-101): out(x, y) = in(M^-1 (x, y))."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    return np.stack(
        [
            ndimage.map_coordinates(image[..., c], [src_y, src_x], order=1, mode="mirror")
            for c in range(image.shape[-1])
        ],
        -1,
    )


def pil(image: np.ndarray) -> Image.Image:
    """A float image in [0, 1] as the 8-bit RGB picture the published code starts from."""
    return Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255))
