import numpy as np
import pandas as pd
import pytest

from steeldefect import metrics, paper, rle, thresholds

LIMITS = {1: (500, 15500), 2: (700, 10000), 3: (1100, 160000), 4: (2800, 127000)}


def _masks_with_areas(areas, shape=(256, 1600)):
    masks = np.zeros((*shape, 4), bool)
    for k, area in enumerate(areas):
        masks[:, :, k].reshape(-1)[:0] = False
        flat = masks[:, :, k].ravel(order="F")
        flat[:area] = True
        masks[:, :, k] = flat.reshape(shape, order="F")
    return masks


@pytest.mark.parametrize(
    ("areas", "kept"),
    [
        ((499, 699, 1099, 2799), (False, False, False, False)),  # just under min
        ((500, 700, 1100, 2800), (True, True, True, True)),  # at min: kept
        ((15500, 10000, 160000, 127000), (True, True, True, True)),  # at max: kept
        ((15501, 10001, 160001, 127001), (False, False, False, False)),  # just over max
        ((0, 5000, 0, 5000), (False, True, False, True)),
    ],
)
def test_area_filter_on_crafted_masks(areas, kept):
    masks = _masks_with_areas(areas)
    out = thresholds.apply_area_thresholds(masks, LIMITS)
    assert out.dtype == bool and out.shape == masks.shape
    assert tuple(out[:, :, k].any() for k in range(4)) == kept
    for k in range(4):
        assert np.array_equal(out[:, :, k], masks[:, :, k] if kept[k] else np.zeros_like(masks[:, :, k]))


def test_area_filter_scales_limits_and_takes_batches():
    # at 128x800 the areas are a quarter: min 125 for class 1
    small = np.stack([_masks_with_areas((124, 175, 275, 700), (128, 800)),
                      _masks_with_areas((125, 174, 40000, 31751), (128, 800))])
    out = thresholds.apply_area_thresholds(small, LIMITS)
    assert out.shape == small.shape
    assert out.any(axis=(1, 2)).tolist() == [[False, True, True, True], [True, False, True, False]]
    with pytest.raises(ValueError, match=r"masks must be \(H, W, 4\) or \(N, H, W, 4\), got shape \(4, 4\)"):
        thresholds.apply_area_thresholds(np.zeros((4, 4)), LIMITS)


def test_paper_limits_are_the_default():
    assert thresholds.area_thresholds(None) == paper.AREA_THRESHOLDS


def test_limits_from_training_masks_use_the_sources_percentile_rule():
    areas = list(range(100, 10100, 100))  # 100 masks of class 1 with areas 100 ... 10000
    table = pd.DataFrame({
        "ImageId": [f"{i}.jpg" for i in range(100)],
        "Defect_1": [f"1 {a}" for a in areas], "Defect_2": [""] * 100, "Defect_3": [""] * 100,
        "Defect_4": ["1 3000"] * 100, "split": ["train"] * 100,
    })
    table.loc[0, "split"] = "val"  # not counted
    limits = thresholds.area_thresholds(table)
    kept = np.sort(areas[1:])  # 99 training masks; index int(0.02 * 99) = 1 from each end
    assert limits[1] == (int(round(kept[1] / 100) * 100), int(round(kept[-2] / 100) * 100)) == (300, 9900)
    assert limits[4] == (3000, 3000)
    assert limits[2] == paper.AREA_THRESHOLDS[2]  # no masks: the paper's limits
    assert rle.area(table["Defect_1"][5]) == 600


def test_search_finds_the_thresholds_that_maximise_dice():
    n, h, w = 12, 32, 32
    truth = np.zeros((n, h, w, 4), bool)
    truth[:6, 4:20, 4:20, 0] = True  # class 1 in half the images
    mask_probs = np.where(truth, 0.65, 0.2).astype(np.float32)
    mask_probs[6:, :2, :2, 0] = 0.9  # speckles where there is no defect: a minimum area removes them
    class_probs = np.zeros((n, 4))
    class_probs[:6, 0] = 0.45  # present, but below the default label threshold
    class_probs[6:9, 0] = 0.45  # speckled images the classifier also calls positive
    class_probs[9:, 0] = 0.35
    # at 32x32 an area of 2,000 px (at 256x1600) is 5 px: it removes the 4-px speckles, not the 256-px defects
    found = thresholds.search_thresholds(class_probs, mask_probs, truth,
                                         min_areas=(0, 2000, 200000), label_thresholds=(0.4, 0.5),
                                         pixel_thresholds=(0.5, 0.7))
    assert found[1]["label_threshold"] == 0.4 and found[1]["pixel_threshold"] == 0.5
    assert found[1]["min_area"] == 2000 and found[1]["dice"] == pytest.approx(1.0)
    assert found[2]["dice"] == pytest.approx(1.0)  # nothing there, nothing predicted
    assert found[2]["label_threshold"] == thresholds.NEVER  # the first candidate, and none beats it


def test_search_never_predicts_a_class_every_setting_gets_wrong():
    """A class whose masks are wrong wherever they are predicted: "never predict it" (the all-empty score) is chosen,
    so the searched rule is not below predicting nothing on these images."""
    truth = np.zeros((4, 32, 32, 4), bool)
    truth[0, :8, :8, 0] = True  # one image has a class-1 defect in the top-left corner
    mask_probs = np.zeros((4, 32, 32, 4), np.float32)
    mask_probs[:, 16:, 16:, 0] = 0.9  # every image gets a confident class-1 mask in the opposite corner
    class_probs = np.full((4, 4), 0.9)
    found = thresholds.search_thresholds(class_probs, mask_probs, truth, label_thresholds=(0.0, 0.5),
                                         pixel_thresholds=(0.5,), min_areas=(0,))
    assert found[1]["label_threshold"] == thresholds.NEVER
    assert found[1]["dice"] == pytest.approx(0.75)  # three of four images rightly empty
    codes = thresholds.decide(np.ones(4), class_probs, np.full((4, 4), 256), mask_shape=(32, 32),
                              limits=dict.fromkeys((1, 2, 3, 4), (0, np.inf)), label_thresholds=found[1]["label_threshold"])
    assert (codes[:, 0] == thresholds.ABSENT).all()


def test_decide_on_literal_cases():
    """The cascade's one rule: an earlier reason wins (no defect, absent, empty, area), limits scaled to the masks."""
    limits = {c: (1000, 10000) for c in (1, 2, 3, 4)}
    defect = [0.9, 0.2, 0.9]
    class_probs = [[0.8, 0.4, 0.8, 0.8], [0.9, 0.9, 0.9, 0.9], [np.nan, 0.6, 0.6, 0.6]]
    # at 128x800 (a quarter of the pixels) the limits are 250-2500 px
    areas = [[300, 300, 0, 2501], [300, 300, 300, 300], [300, 249, 2500, 0]]
    codes = thresholds.decide(defect, class_probs, areas, mask_shape=(128, 800), limits=limits)
    K, A, N, E, R = thresholds.KEPT, thresholds.ABSENT, thresholds.NO_DEFECT, thresholds.EMPTY, thresholds.OUT_OF_RANGE
    assert codes.dtype == np.int8 and codes.tolist() == [[K, A, E, R], [N, N, N, N], [A, R, K, E]]
    without_filter = thresholds.decide(defect, class_probs, areas, mask_shape=(128, 800), limits=limits,
                                       area_filter=False)
    assert without_filter.tolist() == [[K, A, E, K], [N, N, N, N], [A, K, K, E]]
    ungated = thresholds.decide(defect, class_probs, areas, mask_shape=(128, 800), limits=limits, gating="none")
    assert ungated.tolist() == [[K, K, E, R], [K, K, K, K], [K, R, K, E]]
    per_class = thresholds.decide(defect, class_probs, areas, mask_shape=(128, 800), limits=limits,
                                  label_thresholds=[0.9, 0.3, 0.5, 0.5])
    assert per_class[0].tolist() == [A, K, E, R]
    with pytest.raises(ValueError, match="gating must be one of paper, none, got 'sometimes'"):
        thresholds.decide(defect, class_probs, areas, mask_shape=(128, 800), limits=limits, gating="sometimes")


def test_cascade_masks_keeps_only_the_kept_classes():
    probs = np.zeros((1, 32, 32, 4), np.float32)
    probs[0, :10, :10, 0] = 0.7  # 100 px: 100 * 400 = 40,000 px at 256x1600
    probs[0, :2, :2, 1] = 0.7  # 4 px: 1,600 at 256x1600
    probs[0, :, :, 2] = 0.4  # below the pixel threshold: empty
    limits = {1: (500, 50000), 2: (500, 1000), 3: (0, 1e9), 4: (0, 1e9)}
    masks, areas, codes = thresholds.cascade_masks([0.9], [[0.9, 0.9, 0.9, 0.1]], probs, limits=limits)
    assert areas.tolist() == [[100, 4, 0, 0]]
    assert codes.tolist() == [[thresholds.KEPT, thresholds.OUT_OF_RANGE, thresholds.EMPTY, thresholds.ABSENT]]
    assert masks.dtype == bool and masks[0, :, :, 0].sum() == 100 and not masks[0, :, :, 1:].any()
    lower, _, _ = thresholds.cascade_masks([0.9], [[0.9, 0.9, 0.9, 0.1]], probs, limits=limits,
                                           pixel_thresholds=[0.5, 0.5, 0.3, 0.5])
    assert lower[0, :, :, 2].all()  # its own pixel threshold


def _random_validation(n=23, h=16, w=40, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, h, w, 4), bool)
    mask_probs = rng.random((n, h, w, 4)).astype(np.float32) * 0.6
    for i in range(n):
        for k in range(4):
            if rng.random() < 0.4:
                top, left = rng.integers(0, h - 6), rng.integers(0, w - 10)
                truth[i, top : top + 6, left : left + 10, k] = True
                mask_probs[i, top : top + 6, left : left + 10, k] += rng.random() * 0.5
    class_probs = np.clip(truth.any(axis=(1, 2)) * 0.5 + rng.random((n, 4)) * 0.5, 0, 1)
    return rng.random(n), class_probs, mask_probs, truth


def test_the_streamed_search_equals_the_search_in_memory():
    defect, class_probs, mask_probs, truth = _random_validation()
    whole = thresholds.search_thresholds(class_probs, mask_probs, truth, defect_probs=defect)
    assert any(found["label_threshold"] != thresholds.NEVER for found in whole.values())  # a case with choices made
    for batch in (1, 4, 7, 23):
        summary = thresholds.ValidationSummary()
        for start in range(0, len(truth), batch):
            part = slice(start, start + batch)
            summary.add(defect[part], class_probs[part], mask_probs[part], truth[part])
        assert summary.n_images == len(truth) and summary.search() == whole, batch


def test_a_summary_gives_the_dice_of_any_summarised_rule_exactly():
    defect, class_probs, mask_probs, truth = _random_validation(seed=1)
    summary = thresholds.ValidationSummary((0.3, 0.5, 0.7))
    for start in range(0, len(truth), 5):
        summary.add(defect[start : start + 5], class_probs[start : start + 5], mask_probs[start : start + 5],
                    truth[start : start + 5])
    rules = [{"pixel_thresholds": 0.5, "limits": paper.AREA_THRESHOLDS, "label_thresholds": 0.5},
             {"pixel_thresholds": [0.3, 0.7, 0.5, 0.3], "label_thresholds": [0.2, np.inf, 0.6, 0.0],
              "limits": {1: (0, np.inf), 2: (500, np.inf), 3: (2000, np.inf), 4: (0, np.inf)}}]
    for rule in rules:
        masks, _, _ = thresholds.cascade_masks(defect, class_probs, mask_probs, binary_threshold=0.4, **rule)
        expected = metrics.kaggle_dice_per_pair(masks, truth)
        np.testing.assert_array_equal(summary.dice(binary_threshold=0.4, **rule), expected)
    np.testing.assert_array_equal(summary.empty_dice(), np.where(truth.any(axis=(1, 2)), 0.0, 1.0))
    # what it keeps per image does not depend on the masks' size: a few hundred bytes, never a mask
    kept = sum(a.nbytes for part in summary._parts for a in part) / summary.n_images
    assert kept < 400 < truth[0].nbytes
    with pytest.raises(ValueError, match=r"pixel threshold 0.4 was not summarised \(the summary has 0.3, 0.5, 0.7\)"):
        summary.dice(pixel_thresholds=0.4, limits=paper.AREA_THRESHOLDS)
    with pytest.raises(ValueError, match="masks of 8x40, but earlier batches were 16x40: one summary is one size"):
        summary.add(defect[:1], class_probs[:1], mask_probs[:1, :8], truth[:1, :8])
    with pytest.raises(ValueError, match="the summary holds no image: add batches first"):
        thresholds.ValidationSummary().search()
