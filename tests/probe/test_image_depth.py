"""High-bit-depth and float images are scaled to 8 bits, never clipped to white."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from probe.data.example import Example
from probe.models._inputs import load_image
from probe.models.base import BadExampleError


def _grey(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image)
    assert image.mode == "RGB" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].astype(np.int64)


def test_16bit_png_keeps_its_gradient(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")  # PIL reads it as 16/32-bit integers
    grey = _grey(load_image(Example("g", tmp_path / "g16.png", "p")))
    expected = np.rint(ramp / 257.0)  # 65535 -> 255: the full-range 16 -> 8 bit map
    np.testing.assert_allclose(grey, expected, atol=0.5, rtol=0)
    assert np.unique(grey[0]).size == 256 and (grey < 255).mean() > 0.99


@pytest.mark.parametrize("values, mode, scale", [
    (np.linspace(0, 1, 64, dtype=np.float32), "F", 1.0),       # unit float
    (np.linspace(0, 255, 64, dtype=np.float32), "F", 255.0),   # float holding 8-bit values
    (np.linspace(0, 4095, 64).astype(np.int32), "I", 65535.0),  # 12-bit data in a 32-bit image
    (np.linspace(0, 200, 64).astype(np.int32), "I", 255.0),    # 8-bit values in a 32-bit image
])
def test_float_and_int_images_scale_by_their_range(values, mode, scale):
    image = Image.fromarray(np.tile(values, (4, 1)), mode=mode) if mode == "F" else Image.fromarray(np.tile(values, (4, 1)))
    grey = _grey(load_image(Example("x", image, "p")))
    np.testing.assert_allclose(grey[0], np.rint(values.astype(np.float64) * 255.0 / scale), atol=0.5, rtol=0)


def test_negative_float_image_is_refused_in_one_line():
    image = Image.fromarray(np.array([[-1.0, 0.5]], dtype=np.float32), mode="F")
    with pytest.raises(BadExampleError, match="example 'neg': image \\(F\\) has negative or non-finite values"):
        load_image(Example("neg", image, "p"))


def test_8bit_images_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(np.asarray(load_image(Example("c", tmp_path / "c.png", "p"))), rgb)
    grey = Image.fromarray(rgb[..., 0])
    np.testing.assert_array_equal(_grey(load_image(Example("l", grey, "p"))), rgb[..., 0])
