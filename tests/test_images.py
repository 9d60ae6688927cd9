"""Image IO on odd files: every accepted kind comes back RGB uint8; bad files name themselves."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from dorl.data.images import ImageReadError, read_cell_mask, read_rgb


def _rgb(h=40, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_rgb_formats(tmp_path, suffix):
    arr = _rgb()
    path = tmp_path / f"cell{suffix}"
    Image.fromarray(arr).save(path)
    out = read_rgb(path)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    if suffix != ".jpg":
        np.testing.assert_array_equal(out, arr)


def test_grayscale_and_16bit(tmp_path):
    grey = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "g.png")
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (40, 30, 3) and (out[..., 0] == out[..., 2]).all()
    tifffile.imwrite(tmp_path / "rgb16.tif", (_rgb().astype(np.uint16) * 257))
    out16 = read_rgb(tmp_path / "rgb16.tif")
    np.testing.assert_array_equal(out16, _rgb())
    Image.fromarray(grey).save(tmp_path / "g16.png")  # mode I;16
    out = read_rgb(tmp_path / "g16.png")
    assert out.shape == (40, 30, 3) and out.max() == round(grey.max() / 65535 * 255)


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((20, 20, 4), dtype=np.uint8)
    arr[:10, :, 3] = 255  # top half opaque black, bottom transparent
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert (out[:10] == 0).all() and (out[10:] == 255).all()


def test_channel_first_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "cf.tif", np.moveaxis(_rgb(), -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_rgb(tmp_path / "cf.tif"), _rgb())


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(_rgb(40, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_rgb(tmp_path / "r.jpg").shape == (30, 40, 3)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_rgb(tmp_path / "none.png")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageReadError, match="corrupt.jpg.*cannot decode"):
        read_rgb(corrupt)
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageReadError, match="tiny.png.*too small"):
        read_rgb(tmp_path / "tiny.png")


def test_huge_image_refused_before_decoding(tmp_path, monkeypatch):
    import dorl.data.images

    monkeypatch.setattr(dorl.data.images, "MAX_PIXELS", 1000)
    Image.fromarray(_rgb(40, 30)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="big.png.*larger than"):
        read_rgb(tmp_path / "big.png")


def test_cell_mask_conventions(tmp_path):
    zheng = np.zeros((20, 20), dtype=np.uint8)
    zheng[5:15, 5:15] = 128
    zheng[8:12, 8:12] = 255
    zheng[0, 0] = 30  # a stray value below the cytoplasm band
    Image.fromarray(zheng).save(tmp_path / "z.png")
    assert read_cell_mask(tmp_path / "z.png").sum() == 100
    Image.fromarray((zheng > 0).astype(np.uint8)).save(tmp_path / "b.png")
    assert read_cell_mask(tmp_path / "b.png").sum() == 101
