import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import f1_score as sk_f1
from sklearn.metrics import log_loss
from sklearn.metrics import precision_score as sk_precision
from sklearn.metrics import recall_score as sk_recall

from steeldefect import metrics

Y_TRUE = np.array([[1], [0], [1], [0], [1]])
Y_PROB = np.array([[0.9], [0.6], [0.4], [0.1], [0.5]])  # predictions: 1, 1, 0, 0, 1 (0.5 counts as positive)


def test_binary_metrics_on_a_literal_case():
    assert metrics.accuracy(Y_TRUE, Y_PROB) == pytest.approx(3 / 5)
    assert metrics.precision(Y_TRUE, Y_PROB) == pytest.approx(2 / 3)  # TP 2, FP 1
    assert metrics.recall(Y_TRUE, Y_PROB) == pytest.approx(2 / 3)  # TP 2, FN 1
    assert metrics.f1_score(Y_TRUE, Y_PROB) == pytest.approx(2 / 3)
    expected_bce = -np.mean([np.log(0.9), np.log(0.4), np.log(0.4), np.log(0.9), np.log(0.5)])
    assert metrics.binary_crossentropy(Y_TRUE, Y_PROB) == pytest.approx(expected_bce)


def test_multilabel_is_micro_averaged_like_sklearn():
    rng = np.random.default_rng(0)
    y_true = (rng.random((50, 4)) < 0.3).astype(int)
    y_prob = np.clip(y_true * 0.6 + rng.random((50, 4)) * 0.5, 0, 1)
    y_pred = (y_prob >= 0.5).astype(int)
    assert metrics.precision(y_true, y_prob) == pytest.approx(sk_precision(y_true, y_pred, average="micro"))
    assert metrics.recall(y_true, y_prob) == pytest.approx(sk_recall(y_true, y_pred, average="micro"))
    assert metrics.f1_score(y_true, y_prob) == pytest.approx(sk_f1(y_true, y_pred, average="micro"))
    assert metrics.accuracy(y_true, y_prob) == pytest.approx((y_pred == y_true).mean())
    assert metrics.exact_match(y_true, y_prob) == pytest.approx((y_pred == y_true).all(axis=1).mean())
    assert metrics.binary_crossentropy(y_true, y_prob) == pytest.approx(
        log_loss(y_true.ravel(), np.clip(y_prob.ravel(), 1e-7, 1 - 1e-7)), rel=1e-9)


def test_exact_match_differs_from_elementwise_accuracy():
    y_true = [[1, 0, 0, 0], [0, 0, 1, 0]]
    y_prob = [[0.9, 0.8, 0.1, 0.1], [0.1, 0.1, 0.9, 0.2]]
    assert metrics.accuracy(y_true, y_prob) == pytest.approx(7 / 8)
    assert metrics.exact_match(y_true, y_prob) == pytest.approx(1 / 2)


def test_degenerate_cases_are_zero_not_nan():
    assert metrics.precision([[1], [1]], [[0.1], [0.2]]) == 0.0
    assert metrics.recall([[0], [0]], [[0.1], [0.9]]) == 0.0
    assert metrics.f1_score([[0], [0]], [[0.1], [0.2]]) == 0.0
    with pytest.raises(ValueError, match=r"shapes differ: \(2, 1\) vs \(2,\)"):
        metrics.accuracy([[1], [0]], [0.3, 0.4])


def test_keras2_batch_recipe_and_batch_averaging():
    batch = metrics.keras2_batch_metrics(Y_TRUE, Y_PROB)
    # the recipe rounds 0.5 to 0 (banker's rounding), so TP 1, predicted 2, positives 3
    assert batch["precision"] == pytest.approx(1 / 2, rel=1e-6)
    assert batch["recall"] == pytest.approx(1 / 3, rel=1e-6)
    averaged = metrics.batch_averaged(Y_TRUE, Y_PROB, batch_size=2)
    first = metrics.keras2_batch_metrics(Y_TRUE[:2], Y_PROB[:2])
    second = metrics.keras2_batch_metrics(Y_TRUE[2:4], Y_PROB[2:4])
    third = metrics.keras2_batch_metrics(Y_TRUE[4:], Y_PROB[4:])
    assert averaged["recall"] == pytest.approx((2 * first["recall"] + 2 * second["recall"] + third["recall"]) / 5)
    whole = metrics.batch_averaged(Y_TRUE, Y_PROB, batch_size=5)
    assert whole["acc"] == pytest.approx(metrics.accuracy(Y_TRUE, Y_PROB))


def test_dice_on_literal_masks():
    truth = np.zeros((1, 2, 3))
    truth[0, 0, :2] = 1  # 2 pixels
    pred = np.zeros((1, 2, 3))
    pred[0, 0, 1:] = 1  # 2 pixels, 1 shared
    assert metrics.dice_coef(truth, pred, smooth=0) == pytest.approx(2 * 1 / 4)
    assert metrics.dice_loss(truth, pred, smooth=0) == pytest.approx(0.5)
    soft = np.full((1, 2, 3), 0.5)
    assert metrics.dice_coef(truth, soft, smooth=0) == pytest.approx(2 * 1.0 / (2 + 3))
    assert metrics.dice_coef(np.zeros((1, 2, 2)), np.zeros((1, 2, 2))) == pytest.approx(1.0)  # smoothing: empty/empty
    assert metrics.dice_coef(truth, np.zeros((1, 2, 3))) == pytest.approx(1e-5 / (2 + 1e-5))
    per_image = metrics.dice_per_image(np.stack([truth[0], truth[0]]), np.stack([pred[0], truth[0]]), smooth=0)
    assert per_image.tolist() == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="dice expects"):
        metrics.dice_coef(np.zeros(3), np.zeros(3))


def test_kaggle_mean_dice_exact_cases():
    truth = np.zeros((2, 2, 2, 4), bool)
    pred = np.zeros((2, 2, 2, 4), bool)
    truth[0, 0, 0, 0] = pred[0, 0, 0, 0] = True  # perfect: 1
    truth[0, :, :, 1] = True  # 4 true pixels, predicted 2 of them: 2*2/6
    pred[0, 0, :, 1] = True
    pred[1, 0, 0, 2] = True  # predicted where nothing is: 0
    truth[1, 1, 1, 3] = True  # missed: 0
    per_pair = metrics.kaggle_dice_per_pair(pred, truth)
    np.testing.assert_allclose(per_pair, [[1, 2 / 3, 1, 1], [1, 1, 0, 0]])
    assert metrics.kaggle_mean_dice(pred, truth) == pytest.approx((1 + 2 / 3 + 1 + 1 + 1 + 1 + 0 + 0) / 8)
    assert metrics.kaggle_mean_dice(np.zeros((3, 3, 4)), np.zeros((3, 3, 4))) == 1.0
    with pytest.raises(ValueError, match="mask shapes differ"):
        metrics.kaggle_mean_dice(np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2, 3)))


def test_keras_dice_matches_numpy():
    rng = np.random.default_rng(1)
    truth = (rng.random((3, 8, 8, 2)) < 0.3).astype(np.float32)
    prob = rng.random((3, 8, 8, 2)).astype(np.float32)
    keras_value = metrics.keras_dice_coef(tf.constant(truth), tf.constant(prob)).numpy()
    assert keras_value.shape == (3,)
    np.testing.assert_allclose(keras_value, metrics.dice_per_image(truth, prob).mean(axis=1), rtol=1e-5)
    loss = metrics.keras_dice_loss(tf.constant(truth.astype(np.uint8)), tf.constant(prob)).numpy()
    np.testing.assert_allclose(loss, 1 - keras_value, rtol=1e-5)
    combined = metrics.keras_bce_dice_loss(tf.constant(truth), tf.constant(prob)).numpy()
    assert np.all(combined > loss)


def test_weighted_bce_exact_case_and_balanced_weights():
    y = np.array([[1, 0], [0, 1]], np.float32)
    p = np.array([[0.8, 0.3], [0.4, 0.9]], np.float32)
    # per image, the mean over classes of -(w y log p + (1 - y) log(1 - p)); then the mean over images
    expected = np.mean([-(2.0 * np.log(0.8) + np.log(0.7)) / 2, -(np.log(0.6) + 0.5 * np.log(0.9)) / 2])
    assert float(metrics.WeightedBinaryCrossentropy([2.0, 0.5])(y, p)) == pytest.approx(expected, rel=1e-5)
    plain = float(keras.losses.BinaryCrossentropy()(y, p))
    assert float(metrics.WeightedBinaryCrossentropy([1.0, 1.0])(y, p)) == pytest.approx(plain, rel=1e-5)
    np.testing.assert_allclose(metrics.balanced_pos_weight([[1, 0], [1, 1], [0, 0], [1, 0]]), [1 / 3, 3.0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"every class both present and absent.*positives \[2, 0\] over 2 rows"):
        metrics.balanced_pos_weight([[1, 0], [1, 0]])


def test_the_source_loss_is_segmentation_models_dice_over_the_whole_batch():
    from steeldefect.models import sm

    truth = np.zeros((2, 4, 4, 2), np.uint8)
    truth[0, :2, :2, 0] = 1  # image 0: 4 px of channel 0
    truth[1, :, :, 1] = 1  # image 1: all 16 px of channel 1
    pred = np.full((2, 4, 4, 2), 0.25, np.float32)
    pred[0, :2, :2, 0] = 0.75
    loss = float(metrics.SEGMENTATION_LOSSES["sm_dice"](tf.constant(truth), tf.constant(pred)))
    assert loss == pytest.approx(float(sm.losses.dice_loss(tf.constant(truth, tf.float32), tf.constant(pred))), abs=1e-7)
    # one Dice per channel over every pixel of the batch, smooth 1e-5, averaged over channels:
    # channel 0: tp 3, sum(pred) 3 + 28 * 0.25 = 10, sum(truth) 4; channel 1: tp 4, sum(pred) 8, sum(truth) 16
    s = 1e-5
    expected = 1 - ((2 * 3 + s) / (10 + 4 + s) + (2 * 4 + s) / (8 + 16 + s)) / 2
    assert loss == pytest.approx(expected, abs=1e-6)
    per_image = float(tf.reduce_mean(metrics.SEGMENTATION_LOSSES["dice"](tf.constant(truth), tf.constant(pred))))
    assert abs(per_image - loss) > 0.05  # the per-image form (an option) is another loss
