import numpy as np
import pytest

from dorl.resize import resize_batch, resize_image, resize_mask


def test_flat_colour_survives_and_shape_is_square():
    images = np.full((3, 40, 60, 3), (200, 30, 90), np.uint8)
    out = resize_batch(images, 16)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    assert (out == np.array((200, 30, 90), np.uint8)).all()


def test_downsizing_is_antialiased():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = resize_image(np.stack([checker] * 3, -1), 16)
    assert np.abs(out.astype(int) - 128).max() <= 2  # a fine pattern averages to grey, no aliasing


@pytest.mark.parametrize("chunk", [1, 2, 512])
def test_chunks_and_single_images_give_the_same_pixels(chunk):
    images = np.random.default_rng(0).integers(0, 256, (5, 33, 33, 3), dtype=np.uint8)
    out = resize_batch(images, 20, chunk=chunk)
    for i in range(5):  # each image on its own, a batch of one
        np.testing.assert_array_equal(out[i], resize_image(images[i], 20))


def test_resize_is_antialiased_bilinear():
    import torch
    import torch.nn.functional as F

    image = np.random.default_rng(1).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    expected = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False,
                             antialias=True)[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    assert np.abs(resize_image(image, 16).astype(int) - expected.astype(int)).max() <= 1


def test_mask_resize_keeps_labels_binary_and_blocks_whole():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 4:8] = True
    out = resize_mask(mask, 16)
    assert out.dtype == bool and out.shape == (16, 16)
    np.testing.assert_array_equal(out, np.kron(mask, np.ones((2, 2), bool)))
