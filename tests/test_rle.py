import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steeldefect import rle

SHAPE = (256, 1600)


def _pixels(rle_text, shape=SHAPE):
    return [tuple(map(int, p)) for p in np.argwhere(rle.decode(rle_text, shape))]


@pytest.mark.parametrize(
    ("text", "pixels"),
    [
        ("1 1", [(0, 0)]),
        ("2 1", [(1, 0)]),
        ("257 1", [(0, 1)]),
        ("256 2", [(0, 1), (255, 0)]),  # a run wraps from the bottom of column 0 to the top of column 1
        ("409600 1", [(255, 1599)]),  # the last pixel
        ("1 3 300 2", [(0, 0), (1, 0), (2, 0), (43, 1), (44, 1)]),
    ],
)
def test_decode_hand_made_cases(text, pixels):
    assert _pixels(text) == pixels
    mask = rle.decode(text)
    assert mask.shape == SHAPE and mask.dtype == np.uint8
    assert rle.encode(mask) == text


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan"), np.nan])
def test_empty_inputs_mean_an_empty_mask(empty):
    mask = rle.decode(empty)
    assert mask.shape == SHAPE and mask.sum() == 0
    assert rle.area(empty) == 0


def test_encode_empty_and_full_masks():
    assert rle.encode(np.zeros(SHAPE, bool)) == ""
    assert rle.encode(np.ones(SHAPE, np.uint8)) == "1 409600"
    assert rle.decode("1 409600").all()


def test_encode_accepts_bool_and_nonzero_integers():
    mask = np.zeros((4, 3), np.int32)
    mask[1:3, 0] = 7
    mask[0, 2] = 1
    assert rle.encode(mask) == "2 2 9 1"
    assert rle.encode(mask.astype(bool)) == "2 2 9 1"


def test_encode_rejects_non_2d():
    with pytest.raises(rle.RLEError, match=r"one \(height, width\) mask, got shape \(2, 4, 4\)"):
        rle.encode(np.zeros((2, 4, 4)))


def test_area_is_the_sum_of_run_lengths():
    assert rle.area("1 3 300 2 1000 10") == 15


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", r"odd number of tokens \(3\)"),
        ("1 x", r"token 2 \('x'\) is not a positive integer"),
        ("1 -2", r"token 2 \('-2'\) is not a positive integer"),
        ("1.5 2", r"token 1 \('1.5'\) is not a positive integer"),
        ("0 5", r"run 1 starts at pixel 0; starts are 1-indexed"),
        ("5 0", r"run 1 has length 0"),
        ("409600 2", r"run 1 \(409600 2\) ends at pixel 409601, past the last pixel 409600 of a 256x1600 image"),
        ("10 5 12 3", r"run 2 \(start 12\) overlaps or precedes run 1 \(pixels 10..14\)"),
        ("100 5 10 3", r"run 2 \(start 10\) overlaps or precedes run 1"),
    ],
)
def test_invalid_rle_raises_naming_the_problem(text, message):
    with pytest.raises(rle.RLEError, match=message):
        rle.decode(text)
    with pytest.raises(rle.RLEError, match=message):
        rle.validate(text)
    assert issubclass(rle.RLEError, ValueError)


def test_non_string_rle_is_rejected():
    with pytest.raises(rle.RLEError, match="must be a string, None or NaN, got int"):
        rle.decode(12)


def test_adjacent_runs_are_valid():
    assert rle.decode("1 2 3 2", (4, 2)).sum() == 4


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_round_trip_on_random_masks(mask):
    text = rle.encode(mask)
    assert np.array_equal(rle.decode(text, mask.shape), mask.astype(np.uint8))
    assert rle.encode(rle.decode(text, mask.shape)) == text


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 0.05))
def test_round_trip_full_size(seed, density):
    rng = np.random.default_rng(seed)
    mask = rng.random(SHAPE) < density
    assert np.array_equal(rle.decode(rle.encode(mask)), mask)


def test_tensorflow_decode_equals_numpy_on_many_masks():
    rng = np.random.default_rng(0)
    cases = ["", "1 1", "256 2", "409600 1", "1 409600"]
    for _ in range(40):
        mask = np.zeros(SHAPE, np.uint8)
        for _ in range(rng.integers(1, 6)):  # blobs of a few sizes
            r, c = rng.integers(0, SHAPE[0]), rng.integers(0, SHAPE[1])
            mask[r : r + rng.integers(1, 120), c : c + rng.integers(1, 400)] = 1
        cases.append(rle.encode(mask))
        cases.append(rle.encode(rng.random(SHAPE) < 0.01))
    for text in cases:
        assert np.array_equal(rle.decode_tf(text).numpy(), rle.decode(text)), text[:60]
    stacked = rle.decode_tf_channels(cases[:8]).numpy()
    assert stacked.shape == (256, 1600, 8) and stacked.dtype == np.uint8
    for channel, text in enumerate(cases[:8]):
        assert np.array_equal(stacked[:, :, channel], rle.decode(text))
    small = rle.encode(rng.random((32, 48)) < 0.3)
    result = rle.decode_tf(small, (32, 48))
    assert result.dtype.name == "uint8" and tuple(result.shape) == (32, 48)
    assert np.array_equal(result.numpy(), rle.decode(small, (32, 48)))


def test_real_excerpt_round_trips(real_excerpt):
    rows = pd.read_csv(real_excerpt, keep_default_na=False)
    masks = {key: text for key, text in zip(rows["ImageId_ClassId"], rows["EncodedPixels"], strict=True) if text}
    assert {k: rle.area(v) for k, v in masks.items()} == {
        "0002cc93b.jpg_1": 4396,
        "0007a71bf.jpg_3": 6897,
        "0014fce06.jpg_3": 4851,
    }
    for text in masks.values():
        mask = rle.decode(text)
        assert rle.encode(mask) == text
        assert np.array_equal(rle.decode_tf(text).numpy(), mask)
