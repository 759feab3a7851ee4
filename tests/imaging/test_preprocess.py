"""Preprocessing: each step of the paper's section 3.2, its switch, and the output contract."""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from radvault.config import PreprocessSettings
from radvault.errors import ConfigurationError, ImageInputError
from radvault.imaging.preprocess import (
    Preprocessor,
    settings_from_dict,
    settings_to_dict,
    to_png_bytes,
    to_uint8_rgb,
)
from radvault.imaging.records import ImageRecord

RADBENCH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "radbench"

OFF = PreprocessSettings(window=False, normalize=False, enhance=False, denoise=False)


def grey_record(pixels: np.ndarray, **meta) -> ImageRecord:
    """A single-frame greyscale record from a 2-D array."""
    meta.setdefault("source_format", "png")
    return ImageRecord(pixels=pixels[None], **meta)


def texture(rows: int, cols: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise: something with contrast and edges."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 0.6, rows), np.linspace(0, 0.3, cols))
    values = np.clip(ramp + rng.normal(0, 0.05, (rows, cols)), 0, 1)
    top = 255 if dtype == np.uint8 else 4095
    return np.rint(values * top).astype(dtype)


def min_max(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


def clahe(x: np.ndarray) -> np.ndarray:
    u8 = np.rint(x * 255).astype(np.uint8)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(u8).astype(np.float32) / 255


def bilateral(x: np.ndarray) -> np.ndarray:
    return cv2.bilateralFilter(np.ascontiguousarray(x, dtype=np.float32), 5, 0.1, 3.0)


# -- equation (1) and its guard ----------------------------------------------------


def test_min_max_normalisation_is_equation_1():
    pixels = np.tile(np.array([100, 250, 400, 1000], np.uint16), (8, 2))  # 8 x 8
    out = Preprocessor(replace(OFF, normalize=True, size=8))(grey_record(pixels))
    expected = (pixels - 100.0) / (1000.0 - 100.0)
    np.testing.assert_allclose(out[0], expected, atol=1e-7)
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("settings", [PreprocessSettings(), replace(OFF, normalize=True)])
@pytest.mark.parametrize("value", [0, 7, 65535])
def test_constant_image_becomes_zeros_not_nan(settings, value):
    record = grey_record(np.full((30, 20), value, np.uint16))
    out = Preprocessor(settings)(record)  # pytest turns any warning into an error
    assert out.shape == (3, 224, 224)
    assert np.all(out == 0.0)


# -- windowing --------------------------------------------------------------------


def test_window_is_the_dicom_linear_function_and_clips():
    # centre 40, width 400: the linear part runs from -160 to 239 (PS3.3 C.11.2.1.2.1)
    row = np.array([-1000, -160, -159, 40, 139, 239, 240, 3000], np.int16)
    record = grey_record(np.tile(row, (8, 1)), source_format="dicom", modality="CT",
                         window_center=40.0, window_width=400.0, bits_stored=16)
    out = Preprocessor(replace(OFF, window=True, size=8))(record)[0, 0]
    expected = np.clip((row - (40 - 0.5)) / (400 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0] == out[1] == 0.0 and out[-2] == out[-1] == 1.0


def test_window_then_normalise_stretches_what_is_inside_the_window():
    row = np.array([-1000, 0, 20, 40, 60, 80, 1000, 1000], np.int16)
    record = grey_record(np.tile(row, (8, 1)), source_format="dicom", modality="CT",
                         window_center=40.0, window_width=400.0)
    out = Preprocessor(replace(OFF, window=True, normalize=True, size=8))(record)[0, 0]
    windowed = np.clip((row - 39.5) / 399 + 0.5, 0, 1)
    np.testing.assert_allclose(out, min_max(windowed), atol=1e-6)


def test_without_a_window_ct_falls_back_to_min_max():
    pixels = texture(16, 16, np.int16) - 1024
    record = grey_record(pixels, source_format="dicom", modality="CT")
    out = Preprocessor(replace(OFF, window=True, normalize=True, size=16))(record)
    np.testing.assert_allclose(out[0], min_max(pixels), atol=1e-6)


@pytest.mark.parametrize("width", [0.0, 0.5, float("nan")])
def test_an_unusable_window_is_ignored(width):
    pixels = texture(16, 16, np.int16)
    with_window = grey_record(pixels, window_center=100.0, window_width=width)
    without = grey_record(pixels)
    pre = Preprocessor(replace(OFF, window=True, normalize=True, size=16))
    np.testing.assert_array_equal(pre(with_window), pre(without))


def test_colour_images_are_never_windowed():
    rgb = np.stack([texture(16, 16, seed=s) for s in range(3)], axis=-1)
    with_window = ImageRecord(pixels=rgb[None], source_format="dicom", modality="US",
                              window_center=10.0, window_width=5.0)
    pre = Preprocessor(replace(OFF, window=True, normalize=True, size=16))
    np.testing.assert_array_equal(pre(with_window), pre.from_array(rgb))


# -- every switch really skips its step --------------------------------------------


def test_window_off_skips_windowing():
    pixels = texture(16, 16, np.int16) * 3 - 1024
    record = grey_record(pixels, window_center=40.0, window_width=400.0)
    out = Preprocessor(replace(OFF, normalize=True, size=16))(record)
    np.testing.assert_allclose(out[0], min_max(pixels), atol=1e-6)
    windowed = Preprocessor(replace(OFF, window=True, normalize=True, size=16))(record)
    assert not np.allclose(windowed, out)


def test_normalize_off_scales_by_the_nominal_range():
    eight = texture(16, 16)
    out = Preprocessor(replace(OFF, size=16)).from_array(eight)
    np.testing.assert_allclose(out[0], eight / 255.0, atol=1e-7)
    twelve = texture(16, 16, np.uint16)  # 12-bit values in a 16-bit container
    out = Preprocessor(replace(OFF, size=16))(grey_record(twelve, bits_stored=12))
    np.testing.assert_allclose(out[0], twelve / 4095.0, atol=1e-7)
    assert not np.allclose(out[0], min_max(twelve))


def test_enhance_off_equals_the_pipeline_without_clahe():
    pixels = texture(64, 64)
    settings = PreprocessSettings(size=64, enhance=False)
    out = Preprocessor(settings).from_array(pixels)
    np.testing.assert_array_equal(out[0], bilateral(min_max(pixels)))
    with_clahe = Preprocessor(replace(settings, enhance=True)).from_array(pixels)
    np.testing.assert_array_equal(with_clahe[0], bilateral(clahe(min_max(pixels))))
    assert not np.allclose(out, with_clahe, atol=1e-3)


def test_denoise_off_equals_the_pipeline_without_the_bilateral_filter():
    pixels = texture(64, 64)
    settings = PreprocessSettings(size=64, denoise=False)
    out = Preprocessor(settings).from_array(pixels)
    np.testing.assert_array_equal(out[0], clahe(min_max(pixels)))
    denoised = Preprocessor(replace(settings, denoise=True)).from_array(pixels)
    assert not np.allclose(out, denoised, atol=1e-3)


def test_all_steps_off_is_only_resize_and_channels():
    pixels = texture(32, 32)
    out = Preprocessor(replace(OFF, size=32)).from_array(pixels)
    np.testing.assert_allclose(out, np.stack([pixels / 255.0] * 3), atol=1e-7)


def test_colour_clahe_works_on_lightness():
    rgb = np.stack([texture(64, 64, seed=1), texture(64, 64, seed=2) // 2, texture(64, 64)], -1)
    settings = PreprocessSettings(size=64, denoise=False, normalize=False)
    out = Preprocessor(settings).from_array(rgb)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(2.0, (8, 8)).apply(np.ascontiguousarray(lab[..., 0]))
    expected = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-7)


# -- output contract ----------------------------------------------------------------


rng = np.random.default_rng(7)
CASES = {
    "grey-8bit": rng.integers(0, 256, (1, 50, 60), dtype=np.uint8),
    "colour-8bit": rng.integers(0, 256, (1, 50, 60, 3), dtype=np.uint8),
    "grey-16bit": rng.integers(0, 65536, (1, 300, 300), dtype=np.uint16),
    "ct-int16": rng.integers(-1024, 3072, (1, 64, 64), dtype=np.int16),
    "big-endian": rng.integers(0, 4096, (1, 40, 40)).astype(">u2"),
    "float64": rng.normal(0, 1000, (1, 40, 40)),
    "binary-seg": rng.integers(0, 2, (1, 40, 40)).astype(bool),
    "multi-frame": rng.integers(0, 4096, (5, 32, 32), dtype=np.uint16),
    "tall": rng.integers(0, 256, (1, 300, 100), dtype=np.uint8),
    "wide": rng.integers(0, 256, (1, 10, 90), dtype=np.uint8),
    "tiny": rng.integers(0, 256, (1, 1, 1), dtype=np.uint8),
    # half the pixels white: the bilateral filter's float sums reach 1.0000001 here
    "colour-saturated": np.where(rng.random((1, 40, 60, 1)) < 0.5, 255,
                                 rng.integers(0, 256, (1, 40, 60, 3))).astype(np.uint8),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("settings", [PreprocessSettings(), OFF], ids=["all-on", "all-off"])
def test_output_is_float32_channels_first_in_unit_range(name, settings):
    out = Preprocessor(settings)(ImageRecord(pixels=CASES[name], source_format="dicom"))
    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_grey_is_replicated_and_colour_kept_as_rgb():
    grey = Preprocessor(replace(OFF, size=16)).from_array(texture(16, 16))
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 0
    out = Preprocessor(replace(OFF, size=16)).from_array(rgb)
    np.testing.assert_allclose(out[:, 0, 0], [200 / 255, 100 / 255, 0.0], atol=1e-7)


def test_grey_stored_as_rgb_gives_the_same_output_as_grey():
    grey = texture(40, 30)
    pre = Preprocessor()
    assert pre.from_array(np.stack([grey] * 3, -1)).tobytes() == pre.from_array(grey).tobytes()
    assert pre.from_array(grey[..., None]).tobytes() == pre.from_array(grey).tobytes()


@pytest.mark.parametrize(("shape", "axis"), [((40, 20), 1), ((20, 40), 0), ((10, 5), 1)])
def test_aspect_is_kept_and_padding_is_zero(shape, axis):
    pixels = np.full(shape, 0.5, np.float32)
    pixels[0, 0] = 1.0
    out = Preprocessor(replace(OFF, size=32))(grey_record(pixels))[0]
    content = np.moveaxis(out, axis, 0)  # padded axis first
    assert np.all(content[:8] == 0.0) and np.all(content[24:] == 0.0)  # 32 * (1 - 1/2) / 2
    assert np.all(content[8:24] > 0.3)


def test_multi_frame_defaults_to_the_middle_frame():
    frames = np.zeros((5, 16, 16), np.uint8)
    for k in range(5):
        frames[k, k : k + 3, 2:5] = 255
    record = ImageRecord(pixels=frames, source_format="dicom", modality="MR")
    pre = Preprocessor(replace(OFF, normalize=True, size=16))
    np.testing.assert_array_equal(pre(record), pre(record, frame=2))
    np.testing.assert_array_equal(pre(record, frame=-1), pre(record, frame=4))
    assert not np.array_equal(pre(record, frame=0), pre(record, frame=1))


@pytest.mark.parametrize("frame", [5, -6, True, 1.0, "0"])
def test_a_bad_frame_is_refused(frame):
    record = ImageRecord(pixels=np.zeros((5, 8, 8), np.uint8), source_format="dicom")
    with pytest.raises(ConfigurationError, match="frame"):
        Preprocessor()(record, frame=frame)


def test_non_finite_float_pixels_become_finite():
    pixels = np.linspace(0, 10, 64, dtype=np.float32).reshape(8, 8)
    pixels[0, 0], pixels[1, 1], pixels[2, 2] = np.nan, np.inf, -np.inf
    out = Preprocessor(replace(OFF, normalize=True, size=8))(grey_record(pixels))
    assert np.isfinite(out).all()
    assert out[0, 1, 1] == 1.0 and out[0, 2, 2] == 0.0
    all_nan = grey_record(np.full((8, 8), np.nan, np.float32))
    assert np.all(Preprocessor()(all_nan) == 0.0)


@pytest.mark.parametrize("pixels", [np.zeros((4, 4, 2)), np.zeros((4,)), np.zeros((2, 4, 4, 3)),
                                    np.zeros((0, 4)), np.zeros((4, 4), np.complex64),
                                    [[1, 2], [3, 4]]], ids=str)
def test_from_array_refuses_what_cannot_be_an_image(pixels):
    with pytest.raises(ImageInputError):
        Preprocessor().from_array(pixels)


@pytest.mark.parametrize("window", [(1.0,), ("a", 2), 3.0])
def test_from_array_refuses_a_malformed_window(window):
    with pytest.raises(ConfigurationError, match="window"):
        Preprocessor().from_array(texture(8, 8), window=window)


def test_from_array_window_matches_a_record_window():
    pixels = texture(32, 32, np.int16) - 500
    pre = Preprocessor()
    record = grey_record(pixels, window_center=-100.0, window_width=300.0)
    assert pre(record).tobytes() == pre.from_array(pixels, window=(-100, 300)).tobytes()


# -- determinism --------------------------------------------------------------------


def test_same_input_same_bytes_across_instances_and_thread_counts():
    record = ImageRecord(pixels=CASES["grey-16bit"], source_format="dicom", modality="CT",
                         window_center=30000.0, window_width=40000.0)
    colour = ImageRecord(pixels=CASES["colour-8bit"], source_format="jpeg")
    first = [Preprocessor()(r).tobytes() for r in (record, colour)]
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        second = [Preprocessor()(r).tobytes() for r in (record, colour)]
    finally:
        cv2.setNumThreads(threads)
    assert first == second
    assert to_png_bytes(Preprocessor()(record)) == to_png_bytes(Preprocessor()(record))


def test_a_pickled_preprocessor_gives_the_same_bytes():
    pre = Preprocessor(PreprocessSettings(size=96))
    clone = pickle.loads(pickle.dumps(pre))
    pixels = texture(50, 70)
    assert clone.settings == pre.settings
    assert clone.from_array(pixels).tobytes() == pre.from_array(pixels).tobytes()


# -- settings -----------------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"bilateral_diameter": 0}, {"bilateral_sigma_color": 0.0}, {"bilateral_sigma_space": -1.0},
    {"bilateral_sigma_color": float("nan")}, {"clahe_tile_grid": 64, "size": 32},
    {"clahe_clip_limit": float("inf")},
])
def test_invalid_settings_raise_configuration_error(changes):
    with pytest.raises(ConfigurationError):
        Preprocessor(PreprocessSettings(**changes))


@pytest.mark.parametrize("changes", [{"size": 4}, {"size": 5000}, {"clahe_clip_limit": 0.0},
                                     {"clahe_tile_grid": 0}])
def test_settings_validate_themselves(changes):
    with pytest.raises(ConfigurationError):
        PreprocessSettings(**changes)


def test_preprocessor_refuses_what_is_not_settings_or_a_record():
    with pytest.raises(ConfigurationError):
        Preprocessor({"size": 224})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ImageRecord"):
        Preprocessor()(np.zeros((8, 8)))  # type: ignore[arg-type]


def test_settings_round_trip_through_a_plain_dict_and_json():
    settings = PreprocessSettings(size=256, enhance=False, clahe_clip_limit=3.5,
                                  bilateral_sigma_color=0.05)
    as_dict = settings_to_dict(settings)
    assert as_dict["size"] == 256 and as_dict["enhance"] is False
    assert settings_from_dict(as_dict) == settings
    assert settings_from_dict(json.loads(json.dumps(as_dict))) == settings
    assert settings_from_dict({}) == PreprocessSettings()
    assert settings_from_dict({"clahe_clip_limit": 3}).clahe_clip_limit == 3.0


@pytest.mark.parametrize("values", [
    {"resize": True}, {"size": "224"}, {"size": 224.0}, {"enhance": 1}, {"denoise": "yes"},
    {"clahe_clip_limit": True}, {"size": 2}, {"bilateral_diameter": 0}, [("size", 224)],
])
def test_settings_from_dict_is_strict(values):
    with pytest.raises(ConfigurationError):
        settings_from_dict(values)


# -- inspection ---------------------------------------------------------------------


def test_png_for_inspection_decodes_to_the_same_pixels():
    out = Preprocessor(PreprocessSettings(size=64)).from_array(texture(40, 64))
    png = to_png_bytes(out)
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.format == "PNG" and decoded.mode == "RGB" and decoded.size == (64, 64)
        pixels = np.asarray(decoded)
    np.testing.assert_array_equal(pixels, to_uint8_rgb(out))
    np.testing.assert_array_equal(pixels[..., 0], np.rint(out[0] * 255).astype(np.uint8))


@pytest.mark.parametrize("array", [np.zeros((64, 64, 3), np.float32), np.zeros((1, 8, 8)),
                                   np.full((3, 8, 8), np.nan), np.zeros((3, 8, 8), complex)],
                         ids=["channels-last", "one-channel", "nan", "complex"])
def test_png_refuses_arrays_that_are_not_preprocessor_output(array):
    with pytest.raises(ImageInputError):
        to_png_bytes(array)


# -- real images --------------------------------------------------------------------


def test_real_radbench_jpegs():
    images = RADBENCH / "images"
    if not images.is_dir():
        pytest.skip(f"shared radbench data not found at {images}")
    paths = sorted(images.glob("chest_xray/test/*/*.*"))[:1] + sorted(
        images.glob("breast_us/test/*/*.*"))[:1]
    assert len(paths) == 2
    pre = Preprocessor()
    for path in paths:
        with Image.open(path) as img:
            pixels = np.asarray(img)
        out = pre.from_array(pixels)
        assert out.shape == (3, 224, 224) and out.dtype == np.float32
        assert 0.0 <= out.min() < 0.1 and 0.9 < out.max() <= 1.0
        assert pre.from_array(pixels).tobytes() == out.tobytes()


@pytest.mark.parametrize("settings", [PreprocessSettings(), OFF], ids=["all-on", "all-off"])
def test_the_input_pixels_are_never_modified(settings):
    pixels = np.linspace(-0.5, 1.5, 224 * 224, dtype=np.float32).reshape(224, 224)
    before = pixels.copy()
    Preprocessor(settings).from_array(pixels)
    np.testing.assert_array_equal(pixels, before)
