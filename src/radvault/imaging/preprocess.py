"""Preprocessing as in the paper's section 3.2: window, normalise, enhance, denoise, resize.

A :class:`Preprocessor` is configured once with a
:class:`~radvault.config.PreprocessSettings` and then applied to many images
(the MONAI transform shape: settings in ``__init__``, work in ``__call__``).
It turns one frame of an :class:`~radvault.imaging.records.ImageRecord`, or a
plain array read by training code, into the CNN's input: a ``float32`` array
shaped ``(3, size, size)`` with values in ``[0, 1]``. The steps, in order:

1. **Window** (``settings.window``): when the DICOM gives a VOI window and the
   image is greyscale, apply it with the DICOM linear VOI function
   (PS3.3 C.11.2.1.2.1, VOI LUT Function ``LINEAR``, the default), which maps
   the window onto ``[0, 1]`` and clips everything outside. The window comes
   from the modality's own header (CT Hounsfield windows first and foremost);
   none is ever invented: an image without one, CT included, goes straight to
   min-max normalisation. Colour images are never windowed (VOI LUTs apply to
   monochrome data only).
2. **Normalise** (``settings.normalize``): per-image min-max normalisation,
   equation (1), ``I_norm = (I - I_min) / (I_max - I_min)``; a constant image
   becomes all zeros (no NaN, no warning). Switched off (the ablation), pixels
   are scaled by their nominal range instead (``bits_stored`` or the dtype's
   range for integers, clipped for floats), so the output stays in ``[0, 1]``.
3. **Enhance** (``settings.enhance``): CLAHE (``cv2.createCLAHE``) on an 8-bit
   version of the image; colour images on the L channel of CIELAB. OpenCV's
   16-bit CLAHE spreads each tile's histogram over 65,536 bins, so the clip
   limit (relative to the mean bin count) bottoms out at one count per bin:
   far stronger than the 8-bit clip limit the settings describe, and about
   20 times slower. A flat image has no contrast to enhance and is left as is.
4. **Denoise** (``settings.denoise``): an edge-preserving bilateral filter
   (``cv2.bilateralFilter`` on ``float32``; ``bilateral_sigma_color`` is in
   units of the ``[0, 1]`` intensity scale).
5. **Resize** to ``size x size`` keeping the aspect ratio, centred on a zero
   canvas: ``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when enlarging. The
   result is clipped to ``[0, 1]`` (cubic overshoot, float rounding in the
   filters). Always on: the network needs a fixed input.
6. **Three channels**: greyscale replicated, colour kept as RGB. A colour image
   whose three channels are equal is processed as greyscale, so the same
   picture stored as ``L`` or ``RGB`` gives the same output.

Determinism: every step is a pure function of its input, and each OpenCV
function used here computes every output pixel independently of how the work
is split over threads, so the same input gives the same output bytes whatever
``cv2.setNumThreads`` says; this module never changes OpenCV's global thread
settings. The tests check both.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import cv2
import numpy as np
from PIL import Image

from radvault.config import PreprocessSettings
from radvault.errors import ConfigurationError, ImageInputError
from radvault.imaging.records import ImageRecord

__all__ = [
    "Preprocessor",
    "display_array",
    "settings_from_dict",
    "settings_to_dict",
    "to_png_bytes",
    "to_uint8_rgb",
]

logger = logging.getLogger(__name__)

_ARRAY = "<array>"  # how errors name an in-memory array (there is no file path)


def _validate(settings: PreprocessSettings) -> None:
    """Check what :class:`PreprocessSettings` itself does not."""
    if settings.bilateral_diameter < 1:
        raise ConfigurationError(
            f"bilateral_diameter must be at least 1, got {settings.bilateral_diameter}"
        )
    if not (np.isfinite(settings.bilateral_sigma_color) and settings.bilateral_sigma_color > 0):
        raise ConfigurationError("bilateral_sigma_color must be a positive number")
    if not (np.isfinite(settings.bilateral_sigma_space) and settings.bilateral_sigma_space > 0):
        raise ConfigurationError("bilateral_sigma_space must be a positive number")
    if not np.isfinite(settings.clahe_clip_limit):
        raise ConfigurationError("clahe_clip_limit must be a finite number")
    if settings.clahe_tile_grid > settings.size:
        raise ConfigurationError(
            f"clahe_tile_grid ({settings.clahe_tile_grid}) must not exceed size ({settings.size})"
        )


def settings_to_dict(settings: PreprocessSettings) -> dict[str, Any]:
    """Return the settings as a plain, JSON-ready dict (for a model card).

    Parameters
    ----------
    settings : PreprocessSettings
        The settings to record.

    Returns
    -------
    dict
        One key per field, with ``bool``, ``int`` or ``float`` values.

    Raises
    ------
    ConfigurationError
        If ``settings`` is not a :class:`PreprocessSettings`.
    """
    if not isinstance(settings, PreprocessSettings):
        raise ConfigurationError("settings must be a PreprocessSettings")
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def settings_from_dict(values: Mapping[str, Any]) -> PreprocessSettings:
    """Rebuild settings from :func:`settings_to_dict`'s output, strictly.

    Missing keys take their defaults; unknown keys and values of the wrong type
    are refused rather than guessed, so a model card can never silently load
    with different preprocessing than the model was trained with.

    Parameters
    ----------
    values : Mapping
        Field names to values (``bool`` for switches, ``int`` for sizes and
        counts, ``int`` or ``float`` for real numbers).

    Returns
    -------
    PreprocessSettings
        Validated settings.

    Raises
    ------
    ConfigurationError
        If ``values`` is not a mapping, names an unknown field, holds a value of
        the wrong type, or describes invalid settings.
    """
    if not isinstance(values, Mapping):
        raise ConfigurationError("preprocess settings must be a mapping")
    known = {f.name: f.default for f in fields(PreprocessSettings)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ConfigurationError(f"unknown preprocess setting(s): {', '.join(unknown)}")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        default = known[name]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:  # float
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        if not ok:
            raise ConfigurationError(
                f"preprocess setting {name!r} must be {type(default).__name__}, "
                f"got {type(value).__name__}"
            )
        checked[name] = value
    settings = PreprocessSettings(**checked)
    _validate(settings)
    return settings


class Preprocessor:
    """The paper's preprocessing, configured once and applied to many images.

    Parameters
    ----------
    settings : PreprocessSettings, optional
        Which steps run and with what parameters; defaults to
        ``PreprocessSettings()`` (every step on, 224 x 224).

    Raises
    ------
    ConfigurationError
        If ``settings`` is not a :class:`PreprocessSettings` or its bilateral or
        CLAHE parameters are unusable.

    Examples
    --------
    >>> pre = Preprocessor()
    >>> x = pre(record)                  # (3, 224, 224) float32 in [0, 1]
    >>> png = to_png_bytes(x)            # for a human to look at
    """

    def __init__(self, settings: PreprocessSettings | None = None) -> None:
        settings = PreprocessSettings() if settings is None else settings
        if not isinstance(settings, PreprocessSettings):
            raise ConfigurationError("settings must be a PreprocessSettings")
        _validate(settings)
        self._settings = settings

    @property
    def settings(self) -> PreprocessSettings:
        """The settings this preprocessor applies."""
        return self._settings

    def __repr__(self) -> str:
        return f"Preprocessor({self._settings!r})"

    def __call__(self, record: ImageRecord, frame: int | None = None) -> np.ndarray:
        """Preprocess one frame of an image record.

        Parameters
        ----------
        record : ImageRecord
            The decoded image; its window (if any) and ``bits_stored`` are used.
        frame : int, optional
            Which frame; negative values count from the end. Defaults to the
            middle frame (``frames // 2``), the first for a single frame.

        Returns
        -------
        numpy.ndarray
            ``float32``, shape ``(3, size, size)``, values in ``[0, 1]``.

        Raises
        ------
        ConfigurationError
            If ``frame`` is not an integer within the record's frames.
        ImageInputError
            If the pixels have a dtype that cannot be an image (complex, object).
        """
        if not isinstance(record, ImageRecord):
            raise ConfigurationError("Preprocessor expects an ImageRecord")
        index = _frame_index(record.frames, frame)
        window = None
        if record.window_center is not None and record.window_width is not None:
            window = (record.window_center, record.window_width)
        return self._run(record.frame(index), window=window, bits_stored=record.bits_stored)

    def from_array(
        self, pixels: np.ndarray, *, window: tuple[float, float] | None = None
    ) -> np.ndarray:
        """Preprocess a plain array (e.g. a PNG/JPEG read by training code).

        The same code path as :meth:`__call__`, so a model sees identical inputs
        in training and in the vault.

        Parameters
        ----------
        pixels : numpy.ndarray
            One image: ``(rows, cols)`` greyscale, ``(rows, cols, 1)``, or
            ``(rows, cols, 3)`` RGB; any integer, boolean or floating dtype.
        window : tuple of float, optional
            ``(center, width)`` of a VOI window in the pixels' units.

        Returns
        -------
        numpy.ndarray
            ``float32``, shape ``(3, size, size)``, values in ``[0, 1]``.

        Raises
        ------
        ImageInputError
            If the array's shape or dtype cannot be an image.
        ConfigurationError
            If ``window`` is not a pair of numbers.
        """
        if not isinstance(pixels, np.ndarray):
            raise ImageInputError(_ARRAY, "pixels must be a numpy array")
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
            raise ImageInputError(
                _ARRAY, f"expected shape (rows, cols) or (rows, cols, 3), got {pixels.shape}"
            )
        if min(pixels.shape[:2]) < 1:
            raise ImageInputError(_ARRAY, f"image is empty, shape {pixels.shape}")
        if window is not None:
            try:
                center, width = (float(v) for v in window)
            except (TypeError, ValueError):
                raise ConfigurationError("window must be a (center, width) pair") from None
            window = (center, width)
        return self._run(pixels, window=window, bits_stored=None)

    # -- the pipeline ------------------------------------------------------

    def _run(
        self,
        pixels: np.ndarray,
        *,
        window: tuple[float, float] | None,
        bits_stored: int | None,
    ) -> np.ndarray:
        s = self._settings
        colour = pixels.ndim == 3
        if colour and _channels_equal(pixels):
            pixels = pixels[..., 0]
            colour = False
        image = _as_float(pixels)

        windowed = None
        if s.window and window is not None and not colour:
            windowed = _window(image, *window)
        if windowed is not None:
            image = windowed
        if s.normalize:
            image = _min_max(image)
        elif windowed is None:
            image = _nominal_range(image, pixels.dtype, bits_stored)

        image = image.astype(np.float32, copy=False)
        if s.enhance:
            image = _clahe(image, s.clahe_clip_limit, s.clahe_tile_grid)
        if s.denoise:
            image = cv2.bilateralFilter(
                np.ascontiguousarray(image),
                s.bilateral_diameter,
                s.bilateral_sigma_color,
                s.bilateral_sigma_space,
            )
        image = _fit_square(image, s.size)
        # float rounding in the filters' weighted sums can land a hair outside [0, 1]
        np.clip(image, 0.0, 1.0, out=image)
        if image.ndim == 2:
            return np.ascontiguousarray(np.broadcast_to(image, (3, *image.shape)))
        return np.ascontiguousarray(image.transpose(2, 0, 1))


# -- steps (pure functions) ---------------------------------------------------


def _frame_index(frames: int, frame: int | None) -> int:
    if frame is None:
        return frames // 2
    if isinstance(frame, bool) or not isinstance(frame, int | np.integer):
        raise ConfigurationError("frame must be an integer")
    if not -frames <= frame < frames:
        raise ConfigurationError(f"frame {frame} is out of range for an image of {frames} frame(s)")
    return int(frame) % frames


def _channels_equal(pixels: np.ndarray) -> bool:
    first = pixels[..., 0]
    return bool(np.array_equal(first, pixels[..., 1]) and np.array_equal(first, pixels[..., 2]))


def _as_float(pixels: np.ndarray) -> np.ndarray:
    """Pixels as floats: float32 where exact (8/16-bit, float32), else float64.

    Non-finite values (float pixel data) are replaced: NaN and -inf by the
    smallest finite value, +inf by the largest; an image with no finite value
    becomes zeros.
    """
    kind = pixels.dtype.kind
    if kind not in "biuf":
        raise ImageInputError(_ARRAY, f"pixels of dtype {pixels.dtype} cannot be an image")
    exact32 = (kind in "biu" and pixels.dtype.itemsize <= 2) or pixels.dtype == np.float32
    image = np.asarray(pixels, dtype=np.float32 if exact32 else np.float64)
    if kind == "f":
        finite = np.isfinite(image)
        if not finite.all():
            if not finite.any():
                return np.zeros(image.shape, dtype=image.dtype)
            lo, hi = image[finite].min(), image[finite].max()
            image = np.nan_to_num(image, nan=lo, posinf=hi, neginf=lo)
    return image


def _window(image: np.ndarray, center: float, width: float) -> np.ndarray | None:
    """DICOM linear VOI function (PS3.3 C.11.2.1.2.1) onto ``[0, 1]``.

    Returns ``None`` (window ignored) when the window is unusable: not finite
    or narrower than 1, which the standard forbids.
    """
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        logger.debug("ignoring an unusable VOI window (width below 1 or not finite)")
        return None
    lo = center - 0.5 - (width - 1) / 2
    hi = center - 0.5 + (width - 1) / 2
    if hi <= lo:  # width 1: a threshold
        return (image > lo).astype(image.dtype)
    out = (image - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _min_max(image: np.ndarray) -> np.ndarray:
    """Equation (1): ``(I - I_min) / (I_max - I_min)``; zeros when constant."""
    lo = image.min()
    hi = image.max()
    if hi <= lo:
        return np.zeros(image.shape, dtype=image.dtype)
    out = image - lo
    out /= hi - lo
    return out


def _nominal_range(image: np.ndarray, dtype: np.dtype, bits_stored: int | None) -> np.ndarray:
    """Scale by the pixels' nominal range (not the image's own): the ablation path.

    Integers use ``bits_stored`` when the values fit in it, else the dtype's
    full range; booleans are already 0/1; floats are assumed to be on a unit
    scale and are clipped.
    """
    if dtype.kind in "iu":
        total_bits = dtype.itemsize * 8
        bits = total_bits
        if bits_stored is not None and 1 <= bits_stored < total_bits:
            if dtype.kind == "u":
                fits = image.max() <= 2**bits_stored - 1
            else:
                fits = image.min() >= -(2 ** (bits_stored - 1)) and image.max() < 2 ** (
                    bits_stored - 1
                )
            if fits:
                bits = bits_stored
        lo = 0.0 if dtype.kind == "u" else -(2.0 ** (bits - 1))
        image = (image - lo) / (2.0**bits - 1)
    return np.clip(image, 0.0, 1.0)


def _clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """CLAHE on an 8-bit version; colour images on the L channel of CIELAB."""
    if image.max() <= image.min():
        return image  # flat: nothing to enhance (CLAHE would lift it to mid-grey)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    u8 = np.rint(image * 255.0).astype(np.uint8)
    if image.ndim == 2:
        out = clahe.apply(u8)
    else:
        lab = cv2.cvtColor(u8, cv2.COLOR_RGB2LAB)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return out.astype(np.float32) / np.float32(255.0)


def _fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping aspect ratio so the long side is ``size``; pad centred with zeros."""
    rows, cols = image.shape[:2]
    scale = size / max(rows, cols)
    new_rows = min(size, max(1, round(rows * scale)))
    new_cols = min(size, max(1, round(cols * scale)))
    if (new_rows, new_cols) != (rows, cols):
        shrinking = new_rows <= rows and new_cols <= cols
        image = cv2.resize(
            np.ascontiguousarray(image),
            (new_cols, new_rows),
            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC,
        )
    if (new_rows, new_cols) == (size, size):
        return image
    canvas = np.zeros((size, size, *image.shape[2:]), dtype=np.float32)
    top = (size - new_rows) // 2
    left = (size - new_cols) // 2
    canvas[top : top + new_rows, left : left + new_cols] = image
    return canvas


# -- inspection -----------------------------------------------------------------


def display_array(record: ImageRecord, *, frame: int | None = None,
                  window: tuple[float, float] | None = None, max_size: int = 1024
                  ) -> np.ndarray:
    """One frame as a person views it: windowed (the given window, else the image's own,
    else min-max), no enhancement, letterboxed into a square of its long side (at most
    ``max_size``).

    The square has the model input's geometry at another scale (both are the same
    letterbox of the same frame), so a heatmap of the model input resized to it lines up.

    Returns
    -------
    numpy.ndarray
        ``float32``, shape ``(3, side, side)``, values in ``[0, 1]``.

    Raises
    ------
    ConfigurationError
        If ``frame`` is not within the record's frames.
    """
    index = _frame_index(record.frames, frame)
    if window is None and record.window_center is not None and record.window_width is not None:
        window = (record.window_center, record.window_width)
    side = max(8, min(max_size, max(record.rows, record.columns)))
    render = Preprocessor(PreprocessSettings(size=side, window=window is not None,
                                             normalize=window is None, enhance=False,
                                             denoise=False))
    return render.from_array(record.frame(index), window=window)


def to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    """Turn a preprocessed ``(3, H, W)`` array into ``(H, W, 3)`` ``uint8`` RGB.

    Parameters
    ----------
    array : numpy.ndarray
        A :class:`Preprocessor` output: channels first, values in ``[0, 1]``
        (values outside are clipped).

    Returns
    -------
    numpy.ndarray
        ``uint8``, shape ``(H, W, 3)``, ``round(255 * value)``.

    Raises
    ------
    ImageInputError
        If the array is not shaped ``(3, H, W)``, is not real-valued, or holds
        non-finite values.
    """
    if not isinstance(array, np.ndarray) or array.ndim != 3 or array.shape[0] != 3:
        shape = getattr(array, "shape", None)
        raise ImageInputError(_ARRAY, f"expected a (3, rows, cols) array, got shape {shape}")
    if array.dtype.kind not in "biuf":
        raise ImageInputError(_ARRAY, f"pixels of dtype {array.dtype} cannot be an image")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ImageInputError(_ARRAY, "array holds NaN or infinite values")
    scaled = np.clip(array.astype(np.float32, copy=False), 0.0, 1.0) * 255.0
    return np.ascontiguousarray(np.rint(scaled).astype(np.uint8).transpose(1, 2, 0))


def to_png_bytes(array: np.ndarray) -> bytes:
    """Encode a preprocessed ``(3, H, W)`` array as an 8-bit RGB PNG, for inspection.

    Parameters
    ----------
    array : numpy.ndarray
        A :class:`Preprocessor` output.

    Returns
    -------
    bytes
        A PNG file; the same array always gives the same bytes.

    Raises
    ------
    ImageInputError
        As :func:`to_uint8_rgb`.
    """
    buffer = io.BytesIO()
    Image.fromarray(to_uint8_rgb(array)).save(buffer, format="PNG")
    return buffer.getvalue()
