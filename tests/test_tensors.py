"""The resize contract (memory_bank.images) and the array <-> tensor contract (synthesis.tensors)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank.images import resize_label, resize_photo
from synthesis.tensors import image_array, image_tensor, input_tensors, label_tensor, mask_tensor, one_hot


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(1, 60), st.integers(1, 60))
def test_resize_label_is_opencv_nearest_for_any_dtype(h: int, rows: int, w: int, cols: int) -> None:
    label = np.random.default_rng(h * 1000 + rows).integers(0, 256, (h, w), dtype=np.uint8)
    want = cv2.resize(label, (cols, rows), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(resize_label(label, (rows, cols)), want)
    np.testing.assert_array_equal(resize_label(label.astype(np.int64), (rows, cols)), want)
    np.testing.assert_array_equal(resize_label(label > 127, (rows, cols)), want > 127)


def test_resize_photo_averages_areas_down_and_interpolates_up() -> None:
    photo = np.random.default_rng(0).integers(0, 256, (36, 48, 3), dtype=np.uint8)
    down = cv2.resize(photo, (14, 10), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_photo(photo, (10, 14)), down)
    np.testing.assert_array_equal(
        resize_photo(photo, (72, 96)), cv2.resize(photo, (96, 72), interpolation=cv2.INTER_LINEAR)
    )
    assert resize_photo(photo, (36, 48)) is photo
    block = np.zeros((4, 4, 3), np.uint8)
    block[:2, :2] = 200
    assert resize_photo(block, (2, 2))[:, :, 0].tolist() == [[200, 0], [0, 0]]  # whole-pixel areas


def test_image_tensors_round_trip() -> None:
    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image.flags.writeable = False  # as zarr and PIL hand them out
    t = image_tensor(image)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32 and float(t.max()) <= 1.0
    np.testing.assert_array_equal(image_array(t), image)
    assert image_tensor(np.stack([image, image])).shape == (2, 3, 5, 7)
    with pytest.raises(ValueError, match="uint8"):
        image_tensor(image.astype(np.float32))
    layout, missing = np.full((5, 7), 255, np.uint8), np.eye(5, 7, dtype=bool)
    inputs = input_tensors(layout, image, missing)
    assert inputs["layout"].dtype == torch.int64 and torch.equal(inputs["layout"], label_tensor(layout))
    assert inputs["missing"].shape == (1, 5, 7) and torch.equal(inputs["missing"], mask_tensor(missing))


def test_one_hot_unlabelled_convention() -> None:
    ids = torch.tensor([[[0, 2, 255, 3, -1]]])  # 3 classes: 255, 3 and -1 are unlabelled
    hot = one_hot(ids, 3)
    assert hot.shape == (1, 3, 1, 5) and hot.dtype == torch.float32
    assert hot[0, :, 0].T.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    shares = one_hot(ids, 3, unlabelled_channel=True, dtype=torch.float16)
    assert shares.dtype == torch.float16 and torch.equal(shares.sum(1), torch.ones(1, 1, 5, dtype=torch.float16))
    assert shares[0, 3, 0].tolist() == [0, 0, 1, 1, 1]
    assert torch.equal(one_hot(torch.tensor([1, 0]), 2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # (B,) -> (B, C)
    with pytest.raises(ValueError, match="integer"):
        one_hot(ids.float(), 3)
