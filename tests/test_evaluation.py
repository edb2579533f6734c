"""steeldefect.cascade.evaluation: the ablation's variants, the stages' scores, a folder scored, validation Dice."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from steeldefect import cascade as cascade_module
from steeldefect import data, loaders, metrics, thresholds
from steeldefect.cascade import Cascade

from .stand_ins import IMAGE, SIZE, make


def test_evaluate_cascade_variants(twin):
    root, table = twin
    split = table.assign(split="test")
    result = cascade_module.evaluate_cascade(make(defect=0.2), split, root / "train_images", "test")
    variants = result["variants"]
    assert set(variants) == {"paper cascade", "without area filter", "no gating"}
    empty_pairs = 1 - data.class_labels(table).mean()
    # stage 1 says "no defect" everywhere: the gated cascades predict nothing at all
    assert variants["paper cascade"]["kaggle_mean_dice"] == pytest.approx(empty_pairs)
    presence = variants["paper cascade"]["presence"]["class3"]
    assert presence["tp"] == presence["fp"] == 0 and presence["fn"] == int((table["Defect_3"] != "").sum())
    assert variants["no gating"]["presence"]["class3"]["tp"] + variants["no gating"]["presence"]["class3"]["fp"] == len(table)


@pytest.mark.slow
def test_a_tiny_trained_cascade_beats_empty_predictions(tiny_trained):
    """On the held-out images the tiny trained cascade's Kaggle mean Dice beats predicting every mask empty."""
    trained, table, root = tiny_trained
    result = cascade_module.evaluate_cascade(trained, table, root / "train_images", "test")["variants"]
    held_out = table[table["split"] == "test"]
    empty = 1 - data.class_labels(held_out).mean()  # an empty prediction scores 1 exactly where the truth is empty
    dice = result["paper cascade"]["kaggle_mean_dice"]
    assert dice > empty, (dice, empty, result)
    assert result["paper cascade"]["presence"]["class3"]["tp"] > 0


def _image_dependent_cascade(images, **kwargs):
    """Stand-in stages whose outputs follow each image's grey levels (elementwise, so batching cannot change them):
    stage 1 passes the brighter half, stage 2 each class above its own level, the UNet thresholds grey levels."""
    means = images.reshape(len(images), -1).mean(axis=1)
    level = float(np.median(means))
    inputs = keras.Input((*SIZE, 3))
    mean = keras.ops.mean(inputs, axis=(1, 2, 3))[:, None]
    binary = keras.Model(inputs, keras.layers.Lambda(lambda m: tf.sigmoid((m - level) * 4))(mean))
    offsets = tf.constant([[-1.0, 0.5, -3.0, 1.0]])
    multilabel = keras.Model(inputs, keras.layers.Lambda(lambda m: tf.sigmoid(m - level - offsets))(mean))
    grey = keras.ops.mean(inputs, axis=-1, keepdims=True)
    cuts = tf.constant([[[[20.0, 5.0, -5.0, 10.0]]]])
    unet = keras.Model(inputs, keras.layers.Lambda(lambda g: tf.sigmoid((g - level - cuts) / 4))(grey))
    return Cascade(binary, multilabel, {0: unet}, SIZE, {1: (500, 60000), 2: (700, 100000), 3: (1100, 160000),
                                                         4: (2800, 127000)}, **kwargs)


def test_evaluation_and_prediction_share_one_decision_rule(twin):
    """evaluate_cascade's Dice of each variant equals the Dice of Cascade.predict_batch's masks on the same images."""
    root, table = twin
    split = table.assign(split="test")
    batches = list(loaders.make_dataset(split, root / "train_images", "masks", image_size=SIZE, batch_size=16))
    images = np.concatenate([x.numpy() for x, _ in batches])
    truth = np.concatenate([y.numpy() for _, y in batches]).astype(bool)
    evaluated = cascade_module.evaluate_cascade(_image_dependent_cascade(images), split, root / "train_images",
                                                "test")["variants"]
    found = {}
    for name, settings in (("paper cascade", {}), ("without area filter", {"area_filter": False}),
                           ("no gating", {"gating": "none"})):
        results = _image_dependent_cascade(images, **settings).predict_batch(list(images))
        masks = np.stack([r.masks for r in results])
        found[name] = metrics.kaggle_dice_per_pair(masks, truth).mean()
        assert evaluated[name]["kaggle_mean_dice"] == pytest.approx(found[name], abs=1e-12), name
        kept = np.array([[r.decisions[c] == cascade_module.KEPT for c in (1, 2, 3, 4)] for r in results])
        presence = evaluated[name]["presence"]
        assert kept.sum(axis=0).tolist() == [presence[f"class{c}"]["tp"] + presence[f"class{c}"]["fp"]
                                             for c in (1, 2, 3, 4)]
    assert len(set(found.values())) == 3, found  # on these images the three variants do differ


def test_ablation_variants_differ_where_they_must():
    # stage 1 says no defect: only the ungated cascade segments anything
    assert make(defect=0.2).predict(IMAGE).classes == []
    assert make(defect=0.2, gating="none").predict(IMAGE).classes == [3, 4]
    # class 1 is present by stage 2, but its 800 px at 64x320 are 16,000 px at 256x1600, over its maximum 15,500
    cascade = make(classes=(0.9, 0.1, 0.8, 0.1))
    assert cascade.predict(IMAGE).classes == [3]
    assert make(classes=(0.9, 0.1, 0.8, 0.1), area_filter=False).predict(IMAGE).classes == [1, 3]


def test_evaluate_folder_scores_each_stage_on_every_image(twin, tmp_path, capsys, b0_bundle):
    root, table = twin
    found = cascade_module.evaluate_folder(make(), root)  # stage 1 always 0.9, stage 2 always (0.1, 0.1, 0.8, 0.1)
    present = data.class_labels(table).astype(bool)
    defective = present.any(axis=1)
    assert found["n_images"] == len(table) == found["stage1"]["n_images"] and found["split"] == "all"
    assert found["stage1"]["roc_auc"] == pytest.approx(0.5)  # a constant ranks nothing
    assert found["stage1"]["accuracy"] == pytest.approx(defective.mean())
    expected = (present[defective] == np.array([False, False, True, False])).mean()
    assert found["stage2"]["accuracy"] == pytest.approx(expected) and found["stage2"]["n_images"] == defective.sum()
    assert found["all_empty_dice"] == pytest.approx(1 - present.mean())
    assert found["variants"]["paper cascade"]["kaggle_mean_dice"] is not None

    _, bundle = b0_bundle
    out_json = tmp_path / "evaluation.json"
    assert cascade_module.main(["--run", str(bundle), "--evaluate", str(root), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert f"{len(table)} images ({int(defective.sum())} defective)" in out and "stage 1: ROC AUC " in out
    assert "Kaggle mean Dice: all masks empty " in out and json.loads(out_json.read_text())["stage2"] is not None
    with pytest.raises(SystemExit):
        cascade_module.main(["--run", str(bundle)])  # nothing to predict, nothing to evaluate
    assert "give images or folders to predict, or --evaluate DATA_DIR" in capsys.readouterr().err


def test_the_validation_summary_streams_what_the_split_in_memory_gives(twin):
    """Threshold search and validation Dice from the streamed summary (batches of 5) equal the same computed on the
    whole split at once from the cascade's outputs."""
    root, table = twin
    split = table.assign(split="val")
    batches = list(loaders.make_dataset(split, root / "train_images", "masks", image_size=SIZE, batch_size=16))
    images = np.concatenate([x.numpy() for x, _ in batches])
    truth = np.concatenate([y.numpy() for _, y in batches]).astype(bool)
    cascade = _image_dependent_cascade(images)
    summary = cascade_module.validation_summary(cascade, split, root / "train_images", batch_size=5)
    assert summary.n_images == len(images) == 12
    defect, class_probs, mask_probs, _ = cascade.probabilities(images, gating="none")
    searched = thresholds.search_thresholds(class_probs, mask_probs, truth, defect_probs=defect)
    assert summary.search() == searched
    cascade.searched = searched
    found = cascade_module.validation_dice(cascade, summary)
    for name, use in (("paper_rule", False), ("searched", True)):
        masks, _, _ = cascade.decide(defect, class_probs, mask_probs, searched=use)
        assert found[name] == metrics.kaggle_dice_per_pair(masks, truth).mean(), name
    assert found["all_empty"] == (~truth.any(axis=(1, 2))).mean()
    assert found["searched"] >= found["all_empty"]  # the search starts from "never predict"
