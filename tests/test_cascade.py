import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from steeldefect import cascade as cascade_module
from steeldefect import data, loaders, metrics, models, rle, runfiles, synthetic, thresholds
from steeldefect.cascade import Cascade, CascadeError

SIZE = (64, 320)


def constant_classifier(probabilities):
    """A stand-in classifier whose outputs are fixed (its Dense layer has zero weights and a chosen bias)."""
    probabilities = np.asarray(probabilities, np.float32)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    layer = keras.layers.Dense(len(probabilities), activation="sigmoid")
    outputs = layer(x)
    layer.set_weights([np.zeros((3, len(probabilities)), np.float32), np.log(probabilities / (1 - probabilities))])
    return keras.Model(inputs, outputs, name="efficientnetb0_stand-in")


def constant_unet(mask):
    """A stand-in segmentation model that predicts ``mask`` (h, w, c) for every image."""
    constant = tf.constant(mask.astype(np.float32))
    inputs = keras.Input((*SIZE, 3))
    outputs = keras.layers.Lambda(lambda x: tf.broadcast_to(constant, (tf.shape(x)[0], *constant.shape)))(inputs)
    return keras.Model(inputs, outputs)


def square(class_size=(20, 40)):
    mask = np.zeros((*SIZE, 1), np.float32)
    mask[10 : 10 + class_size[0], 50 : 50 + class_size[1]] = 0.9
    return mask


def make(defect=0.9, classes=(0.1, 0.1, 0.8, 0.1), masks=None, **kwargs):
    masks = masks or {c: constant_unet(square()) for c in (1, 2, 3, 4)}
    return Cascade(constant_classifier([defect]), constant_classifier(classes), masks, SIZE, **kwargs)


IMAGE = np.full((*SIZE, 3), 120, np.uint8)


def test_stage1_no_means_empty_masks_and_later_stages_never_run():
    cascade = make(defect=0.2)
    result = cascade.predict(IMAGE)
    assert not result.masks.any() and result.masks.shape == (*SIZE, 4) and result.masks.dtype == bool
    assert cascade.calls == {"binary": 1, "multilabel": 0, "segmentation": 0}
    assert set(result.decisions.values()) == {cascade_module.NO_DEFECT}
    assert np.isnan(result.class_probs).all()
    assert result.rles == {1: "", 2: "", 3: "", 4: ""}


def test_only_classes_predicted_present_are_segmented():
    cascade = make()
    result = cascade.predict(IMAGE)
    assert cascade.calls == {"binary": 1, "multilabel": 1, "segmentation": 1}
    assert result.classes == [3]
    assert result.decisions[1] == cascade_module.ABSENT
    assert result.masks[:, :, 2].sum() == 20 * 40 == result.areas[3]
    np.testing.assert_allclose(result.class_probs, [0.1, 0.1, 0.8, 0.1], rtol=1e-5)
    assert result.defect_prob == pytest.approx(0.9)


def test_gating_none_segments_every_class_and_only_filters_areas():
    cascade = make(defect=0.2, gating="none")
    result = cascade.predict(IMAGE)
    assert cascade.calls["segmentation"] == 4
    # 800 px at 64x320 is 16,000 px at 256x1600 (20x the pixels): inside the limits of classes 3 and 4 only
    assert result.classes == [3, 4]
    assert result.decisions[1].startswith("dropped: area 16000 px (at 256x1600) outside [500, 15500]")
    assert not make(gating="none", area_filter=False).predict(IMAGE).decisions[1].startswith("dropped")


def test_batch_runs_each_stage_on_only_the_images_that_reach_it():
    cascade = make(defect=0.9)
    cascade.binary = constant_unet  # replaced below by a model whose output depends on the image
    inputs = keras.Input((*SIZE, 3))
    bright = keras.layers.Lambda(lambda x: tf.cast(tf.reduce_mean(x, axis=(1, 2, 3))[:, None] > 100, tf.float32))(inputs)
    cascade.binary = keras.Model(inputs, bright)
    images = [IMAGE, np.zeros((*SIZE, 3), np.uint8), IMAGE]
    results = cascade.predict_batch(images)
    assert [r.classes for r in results] == [[3], [], [3]]
    assert cascade.calls == {"binary": 3, "multilabel": 2, "segmentation": 2}


def test_masks_come_back_at_the_input_size_and_rles_at_full_size():
    result = make().predict(np.full((256, 1600), 120, np.uint8))  # grayscale, full size (models run at 64x320)
    assert result.masks.shape == (256, 1600, 4)
    assert abs(int(result.masks[:, :, 2].sum()) - 20 * 800) < 0.05 * 20 * 800  # upsampled 4x5, then thresholded
    assert np.array_equal(rle.decode(result.rles[3]).astype(bool), result.masks[:, :, 2])
    half = make().predict(np.full((128, 800, 3), 120, np.uint8))
    assert half.masks.shape == (128, 800, 4)
    assert abs(rle.area(half.rles[3]) - 4 * int(half.masks[:, :, 2].sum())) <= 4  # RLEs are always at 256x1600


def test_joint_segmentation_model():
    mask = np.zeros((*SIZE, 4), np.float32)
    mask[..., 2:3] = square()
    mask[..., 0] = 0.9  # class 1 everywhere: never reached, stage 2 says absent
    cascade = make(masks={0: constant_unet(mask)})
    result = cascade.predict(IMAGE)
    assert result.classes == [3] and not result.masks[:, :, 0].any()


def test_bad_inputs_name_what_is_wrong(tmp_path):
    cascade = make()
    with pytest.raises(FileNotFoundError, match="missing.jpg: no such image file"):
        cascade.predict(tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg: not a readable image"):
        cascade.predict(tmp_path / "notes.jpg")
    with pytest.raises(ValueError, match="must be uint8 \\(0-255\\), got float64"):
        cascade.predict(np.zeros((64, 320)))
    with pytest.raises(ValueError, match=r"must be H×W or H×W×3, got shape \(64, 320, 4\)"):
        cascade.predict(np.zeros((64, 320, 4), np.uint8))
    for empty in ((0, 0, 3), (0, 320, 3), (64, 0), (64, 320, 0)):  # never reaches TensorFlow's resize
        with pytest.raises(ValueError, match=re.escape(f"H×W or H×W×3 with H, W > 0, got shape {empty} (empty)")):
            cascade.predict(np.zeros(empty, np.uint8))
    with pytest.raises(ValueError, match=r"must be H×W or H×W×3, got shape \(1, 64, 320, 3\)"):
        cascade.predict(np.zeros((1, 64, 320, 3), np.uint8))  # a batch is predict_batch's
    with pytest.raises(ValueError, match=r"with H, W > 0, got shape \(0, 0, 3\)"):
        cascade.predict_batch([np.zeros((64, 320, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)])
    with pytest.raises(ValueError, match="gating must be one of paper, none"):
        make(gating="sometimes")


@pytest.fixture(scope="module")
def shared_b0_bundle(tmp_path_factory):
    """A real (untrained) cascade of small EfficientNet models and the bundle it saved: built once per worker
    (three EfficientNet builds and saves, several seconds); tests take a copy of the bundle (``b0_bundle``)."""
    binary = models.build_classifier("efficientnetb0", 1, SIZE, None, head="simple")
    multi = models.build_classifier("efficientnetb0", 4, SIZE, None)
    joint = models.build_unet("efficientnetb0", 4, SIZE, None)
    cascade = Cascade(binary, multi, {0: joint}, SIZE, gating="none", area_filter=False)
    return cascade, cascade.save(tmp_path_factory.mktemp("b0") / "bundle")


@pytest.fixture
def b0_bundle(shared_b0_bundle, tmp_path):
    """The shared cascade (only predicted with) and a copy of its bundle in ``tmp_path / "bundle"``, the test's to
    change."""
    cascade, source = shared_b0_bundle
    return cascade, Path(shutil.copytree(source, tmp_path / "bundle"))


def test_save_load_and_default_lookup(tmp_path, monkeypatch, b0_bundle):
    cascade, bundle = b0_bundle
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3)).astype(np.uint8)
    expected = cascade.predict(image)
    loaded = Cascade.load(bundle, gating="none", area_filter=False)
    again = loaded.predict(image)
    assert again.defect_prob == pytest.approx(expected.defect_prob, abs=1e-6)
    np.testing.assert_allclose(again.class_probs, expected.class_probs, atol=1e-6)
    assert again.rles == expected.rles
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEELDEFECT_CASCADE", raising=False)
    with pytest.raises(CascadeError, match=r"no default cascade.*python -m steeldefect.experiments.*Cascade.load"):
        cascade_module.predict(image)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest.txt").write_text(str(bundle))
    assert cascade_module.default_cascade_path() == bundle
    assert cascade_module.predict(image).defect_prob == pytest.approx(loaded.predict(image).defect_prob, abs=1e-6)
    monkeypatch.setenv("STEELDEFECT_CASCADE", str(tmp_path / "elsewhere"))
    with pytest.raises(CascadeError, match="elsewhere/cascade.json is missing"):
        cascade_module.predict(image)
    assert json.loads((bundle / "binary" / "model.json").read_text())["head"] == "simple"
    assert json.loads((bundle / "multilabel" / "model.json").read_text())["head"] == "paper"
    with pytest.raises(CascadeError, match="the binary model has no spec"):
        make().save(tmp_path / "stand-ins")  # models not built by steeldefect: nothing to rebuild them from
    spec = json.loads((bundle / "cascade.json").read_text())
    spec["multilabel"] = "gone"
    (bundle / "cascade.json").write_text(json.dumps(spec))
    with pytest.raises(CascadeError, match="names gone, but .*gone/model.json is missing"):
        Cascade.load(bundle)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    root = synthetic.make_synthetic_severstal(tmp_path_factory.mktemp("twin") / "twin", 12, seed=2, n_test_images=3)
    return root, data.load_table(root)


def test_submission_has_four_rows_per_image_in_the_sample_format(twin, tmp_path):
    root, _ = twin
    cascade = make()
    df = cascade_module.predict_dir(root / "test_images", cascade)
    assert list(df.columns) == list(pd.read_csv(root / "sample_submission.csv").columns)
    assert len(df) == 4 * 3 and df.groupby("ImageId").size().tolist() == [4, 4, 4]
    assert df["ClassId"].tolist() == [1, 2, 3, 4] * 3
    kept = df[df["EncodedPixels"] != ""]
    assert kept["ClassId"].tolist() == [3, 3, 3]
    assert abs(rle.area(kept["EncodedPixels"].iloc[0]) - 20 * 800) < 0.05 * 20 * 800  # 800 px at 64x320, upsampled
    path = cascade_module.write_submission(df, tmp_path / "out" / "submission.csv")
    assert pd.read_csv(path, keep_default_na=False).equals(df)
    old = cascade_module.predict_dir(root / "test_images", cascade, submission_format="2019")
    assert list(old.columns) == ["ImageId_ClassId", "EncodedPixels"] and old["ImageId_ClassId"][2].endswith("_3")


def test_overlay_colours_each_class():
    masks = np.zeros((*SIZE, 4), bool)
    masks[5:30, 5:60, 0] = True
    masks[30:60, 100:200, 3] = True
    picture = cascade_module.overlay(IMAGE, masks)
    assert picture.shape == (*SIZE, 3) and picture.dtype == np.uint8
    assert tuple(picture[6, 6]) != tuple(IMAGE[6, 6]) and tuple(picture[0, 300]) == tuple(IMAGE[0, 300])
    assert picture[15, 30, 0] > picture[15, 30, 2]  # class 1 is red
    with pytest.raises(ValueError, match="masks must be"):
        cascade_module.overlay(IMAGE, masks[:10])


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


def _conv_block(x, filters: int):
    for _ in range(2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.Activation("relu")(keras.layers.BatchNormalization(momentum=0.9)(x))
    return x


def _small_model(outputs: int, segmentation: bool) -> keras.Model:
    """A small CNN on uint8 images at half resolution: a classifier (global max pooling) or a two-level UNet."""
    inputs = keras.Input((*SIZE, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(keras.layers.Lambda(lambda t: tf.cast(t, "float32"))(inputs))
    level1 = _conv_block(keras.layers.AveragePooling2D(2)(x), 16)
    level2 = _conv_block(keras.layers.MaxPooling2D()(level1), 32)
    x = _conv_block(keras.layers.MaxPooling2D()(level2), 64)
    if segmentation:
        x = _conv_block(keras.layers.Concatenate()([keras.layers.UpSampling2D()(x), level2]), 32)
        x = _conv_block(keras.layers.Concatenate()([keras.layers.UpSampling2D()(x), level1]), 16)
        x = keras.layers.Activation("sigmoid")(keras.layers.UpSampling2D(2)(keras.layers.Conv2D(outputs, 1)(x)))
        loss = metrics.SEGMENTATION_LOSSES["bce_dice"]
    else:
        x = keras.layers.Dense(outputs, activation="sigmoid")(keras.layers.GlobalMaxPooling2D()(x))
        loss = "binary_crossentropy"
    model = keras.Model(inputs, x)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss)
    return model


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    """Three small CNNs trained briefly on a 400-image twin, joined by the cascade (gating, area filter): the cascade,
    its split table and the twin's folder. The cascade's code path is the paper's; only the models are small
    (EfficientNets from scratch need far longer to learn the twin).

    The twin's defects are drawn at 3x real steel's contrast: at the real contrast (twin v3) these models, seeing
    the images at 32x160, do not find them in 20 epochs (0.833 against 0.859 for all-empty; at 64x320, 5 min of
    training, 0.864), and the tests using it are about the cascade's code, not about how hard steel is."""
    keras.utils.set_random_seed(0)
    root = synthetic.make_synthetic_severstal(tmp_path_factory.mktemp("tiny") / "twin", 400, seed=5,
                                              n_test_images=2, defect_contrast=3.0)
    table = data.split_table(data.load_table(root), seed=0)
    table["split"] = table["split"].replace({"val": "test"})  # evaluate on every held-out image (fewer ties)
    batches = list(loaders.make_dataset(table[table["split"] == "train"], root / "train_images", "masks",
                                        image_size=SIZE, batch_size=64))
    images, masks = np.concatenate([x.numpy() for x, _ in batches]), np.concatenate([y.numpy() for _, y in batches])
    present = masks.any(axis=(1, 2))
    defective = present.any(axis=1)
    binary, multilabel, unet = _small_model(1, False), _small_model(4, False), _small_model(4, True)
    # 10 epochs: Kaggle mean Dice 0.905 on the held-out images against 0.859 for all-empty (20 epochs: 0.920, 36 s
    # more on 2 cores).
    epochs = 10
    binary.fit(images, defective[:, None].astype("float32"), epochs=epochs, batch_size=16, verbose=0)
    multilabel.fit(images[defective], present[defective].astype("float32"), epochs=epochs, batch_size=16, verbose=0)
    unet.fit(images[defective], masks[defective].astype("float32"), epochs=epochs, batch_size=16, verbose=0)
    limits = thresholds.area_thresholds(table[table["split"] == "train"])
    return Cascade(binary, multilabel, {0: unet}, SIZE, limits), table, root


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


def _truncated_copy(source, target):
    encoded = source.read_bytes()
    target.write_bytes(encoded[: len(encoded) // 2])  # what an interrupted copy leaves


def test_predict_dir_and_the_cli_report_a_bad_image_and_predict_the_others(twin, tmp_path, capsys, b0_bundle):
    root, _ = twin
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((root / "test_images").iterdir())[:2]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    _truncated_copy(good[0], folder / "0000cut.jpg")
    with pytest.raises(ValueError, match=r"0000cut.jpg: not a readable image"):
        cascade_module._read_image(folder / "0000cut.jpg")
    df = cascade_module.predict_dir(folder, make())
    assert sorted(set(df["ImageId"])) == sorted(p.name for p in good) and len(df) == 8
    assert list(df.attrs["skipped"]) == ["0000cut.jpg"]

    cascade, bundle = b0_bundle
    submission = tmp_path / "submission.csv"
    code = cascade_module.main(["--run", str(bundle), str(folder), "--submission", str(submission)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "0000cut.jpg: not a readable image" in err and "1 of 3 images could not be read and were not predicted: 0000cut.jpg" in err
    assert all(f"{p.name}: defect p=" in out for p in good)
    written = pd.read_csv(submission, keep_default_na=False)
    assert len(written) == 8 and set(written["ImageId"]) == {p.name for p in good}


def test_the_default_cascade_is_loaded_once_also_from_a_relative_path(tmp_path, monkeypatch, b0_bundle):
    _, bundle = b0_bundle
    monkeypatch.setattr(cascade_module, "_default", None)
    loads = []
    original = Cascade.load.__func__
    monkeypatch.setattr(Cascade, "load", classmethod(lambda cls, path, **kw: loads.append(path) or original(cls, path, **kw)))
    monkeypatch.chdir(tmp_path)
    for value in ("bundle", "bundle/cascade.json", "./bundle/", str(bundle)):
        monkeypatch.setenv("STEELDEFECT_CASCADE", value)
        first = cascade_module.load_default()
        assert cascade_module.load_default() is first
    assert len(loads) == 1


def test_a_stale_model_file_is_a_clear_error(tmp_path, capsys, b0_bundle):
    _, bundle = b0_bundle
    spec = json.loads((bundle / "binary" / "model.json").read_text())
    spec["kind"] = "transformer"  # a model.json of another version
    (bundle / "binary" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(runfiles.RunFileError, match=r"binary: model.json and model.weights.h5 do not make a model "
                                                    r"this version of steeldefect can load"):
        Cascade.load(bundle)
    (bundle / "cascade.json").write_text('{"binary": "binary"')  # cut short
    assert cascade_module.main(["--run", str(bundle), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cascade.json is not valid JSON" in err and "Traceback" not in err


def test_a_truncated_real_jpeg_is_refused_not_decoded_half_grey(real_dir, tmp_path):
    source = sorted((real_dir / "train_images").iterdir())[0]
    _truncated_copy(source, tmp_path / "cut.jpg")
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None  # cv2.imread decodes it, the lower rows grey
    with pytest.raises(ValueError, match=r"cut.jpg: not a readable image \(OpenCV could not decode it: not an "
                                         r"image, or a corrupt or truncated file\)"):
        cascade_module._read_image(tmp_path / "cut.jpg")
    assert cascade_module._read_image(source).shape == (256, 1600, 3)  # the whole file reads


def test_a_class_without_a_model_or_training_image_is_never_predicted():
    per_class = make(classes=(0.9, 0.9, 0.8, 0.1), masks={3: constant_unet(square()), 4: constant_unet(square())})
    result = per_class.predict(IMAGE)
    assert result.classes == [3] and per_class.never_predicted == {1: "no segmentation model",
                                                                   2: "no segmentation model"}
    assert result.decisions[1] == "dropped: never predicted (no segmentation model)"
    mask = np.zeros((*SIZE, 4), np.float32)
    mask[..., :] = square()
    joint = make(classes=(0.9, 0.1, 0.8, 0.1), masks={0: constant_unet(mask)},
                 never_predicted={3: "no training image of class 3"})
    assert joint.predict(IMAGE).classes == []  # class 1's 16,000 px are over its limit; class 3 is off
    ungated = make(defect=0.2, gating="none", masks={0: constant_unet(mask)}, never_predicted={3: "none in train"})
    assert ungated.predict(IMAGE).classes == [4]
    with pytest.raises(ValueError, match=r"segmentation needs models for some of classes \(1, 2, 3, 4\) or"):
        Cascade(constant_classifier([0.9]), constant_classifier([0.5] * 4), {}, SIZE)


def test_classifiers_and_unets_of_different_input_sizes(twin):
    """The paper profile's cascade: classifiers at one size, UNets at another; each model gets its own resize."""
    def classifier(size, probabilities):
        inputs = keras.Input((*size, 3))
        layer = keras.layers.Dense(len(probabilities), activation="sigmoid")
        outputs = layer(keras.layers.GlobalAveragePooling2D()(inputs))
        layer.set_weights([np.zeros((3, len(probabilities)), np.float32),
                           np.log(np.asarray(probabilities) / (1 - np.asarray(probabilities))).astype(np.float32)])
        return keras.Model(inputs, outputs)

    cascade = Cascade(classifier((32, 160), [0.9]), classifier((32, 160), [0.1, 0.1, 0.8, 0.1]),
                      {c: constant_unet(square()) for c in (1, 2, 3, 4)}, SIZE)
    assert cascade.input_size == (256, 1600)  # the models differ: evaluation feeds full-size images
    result = cascade.predict(np.full((256, 1600, 3), 120, np.uint8))
    assert result.classes == [3] and result.masks.shape == (256, 1600, 4)
    assert make().input_size == SIZE  # one size: fed at it
    root, table = twin
    evaluated = cascade_module.evaluate_cascade(cascade, table.assign(split="test"), root / "train_images", "test")
    assert evaluated["image_size"] == list(SIZE) and evaluated["n_images"] == len(table)
    presence = evaluated["variants"]["paper cascade"]["presence"]
    assert presence["class3"]["tp"] + presence["class3"]["fp"] == len(table)  # the square is kept in every image


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


def _position_dependent_cascade(**kwargs):
    """Stand-in stages whose outputs depend on where the bright pixels are: stage 1 and 2 weigh the columns by a
    ramp (left 0, right 1) and stage 2 also the rows; the UNet scales each pixel by its column's ramp."""
    ramp = tf.constant(np.linspace(0, 1, SIZE[1], dtype=np.float32))[None, None, :, None]
    rows = tf.constant(np.linspace(0, 1, SIZE[0], dtype=np.float32))[None, :, None, None]
    inputs = keras.Input((*SIZE, 3))
    grey = keras.ops.mean(inputs, axis=-1, keepdims=True) / 255
    left_right = keras.layers.Lambda(lambda g: tf.reduce_mean(g * ramp, axis=(1, 2, 3))[:, None])(grey)
    up_down = keras.layers.Lambda(lambda g: tf.reduce_mean(g * rows, axis=(1, 2, 3))[:, None])(grey)
    binary = keras.Model(inputs, keras.layers.Lambda(lambda v: tf.sigmoid(8 * v - 2))(left_right))
    multilabel = keras.Model(inputs, keras.layers.Lambda(
        lambda v: tf.sigmoid(tf.concat([8 * v[0] - 2, 8 * v[1] - 2, 8 * v[0] - 1, 8 * v[1] - 1], axis=1)))(
        [left_right, up_down]))
    unet = keras.Model(inputs, keras.layers.Lambda(lambda g: tf.tile(g * ramp, (1, 1, 1, 4)))(grey))
    return Cascade(binary, multilabel, {0: unet}, SIZE, gating="none", **kwargs)


def test_the_command_lines_tta_choices():
    from steeldefect.config import TTA_CHOICES, tta_from_choice

    assert [tta_from_choice(c) for c in TTA_CHOICES] == [None, "hflip", "hvflip"]
    assert all(tta_from_choice(c) in cascade_module.TTA_FLIPS for c in TTA_CHOICES)  # what Cascade accepts
    with pytest.raises(ValueError, match=r"--tta must be one of none, hflip, hvflip, got 'vflip'"):
        tta_from_choice("vflip")


def test_flip_tta_averages_each_stage_over_the_flipped_copies(tmp_path):
    images = np.zeros((2, *SIZE, 3), np.uint8)
    images[0, :, : SIZE[1] // 4] = 255  # bright at the left
    images[1, : SIZE[0] // 2, -40:] = 200  # bright at the top right
    plain = _position_dependent_cascade().probabilities(images)
    for tta, flips in (("hflip", [(), (2,)]), ("hvflip", [(), (2,), (1,), (1, 2)])):
        cascade = _position_dependent_cascade(tta=tta)
        defect, class_probs, masks, _ = cascade.probabilities(images)
        copies = [_position_dependent_cascade().probabilities(np.ascontiguousarray(np.flip(images, axes)))
                  for axes in flips]
        np.testing.assert_allclose(defect, np.mean([c[0] for c in copies], axis=0), rtol=1e-5)
        np.testing.assert_allclose(class_probs, np.mean([c[1] for c in copies], axis=0), rtol=1e-5)
        back = [np.flip(c[2], axes) if axes else c[2] for c, axes in zip(copies, flips, strict=True)]
        np.testing.assert_allclose(masks, np.mean(back, axis=0), rtol=1e-5, atol=1e-6)
        assert cascade.calls == {"binary": 2, "multilabel": 2, "segmentation": 2}  # images seen, not copies
    assert not np.allclose(plain[0], _position_dependent_cascade(tta="hflip").probabilities(images)[0])
    # a mirrored image's mask, mirrored back, is what the cascade predicts for the image itself (up to float noise)
    hflip = _position_dependent_cascade(tta="hflip")
    mirrored = hflip.probabilities(np.ascontiguousarray(images[:, :, ::-1]))[2]
    np.testing.assert_allclose(mirrored[:, :, ::-1], hflip.probabilities(images)[2], atol=1e-6)
    with pytest.raises(ValueError, match="tta must be None, 'hflip' or 'hvflip', got 'rot90'"):
        _position_dependent_cascade(tta="rot90")


def test_tta_is_saved_with_the_cascade_and_chosen_on_load_and_on_the_command_line(tmp_path, capsys, b0_bundle):
    cascade, bundle = b0_bundle
    image = np.random.default_rng(1).integers(0, 256, (*SIZE, 3)).astype(np.uint8)
    plain = cascade.predict(image).defect_prob
    mirrored = cascade.predict(np.ascontiguousarray(image[:, ::-1])).defect_prob
    assert Cascade.load(bundle).tta is None and json.loads((bundle / "cascade.json").read_text())["tta"] is None
    flipped = Cascade.load(bundle, gating="none", area_filter=False, tta="hflip")
    assert flipped.predict(image).defect_prob == pytest.approx((plain + mirrored) / 2, abs=1e-6)
    saved = flipped.save(tmp_path / "with-tta")
    assert Cascade.load(saved).tta == "hflip"  # a saved cascade keeps its TTA
    path = tmp_path / "image.jpg"
    cv2.imwrite(str(path), image)
    decoded = cascade_module._read_image(path)
    for option, expected in (("none", cascade.predict(decoded).defect_prob),
                             ("hflip", flipped.predict(decoded).defect_prob)):
        assert cascade_module.main(["--run", str(saved), "--tta", option, str(path)]) == 0
        assert f"image.jpg: defect p={expected:.2f}" in capsys.readouterr().out


# ----- export: one SavedModel, TFLite stages


def _coded_cascade(**kwargs):
    """Stand-in stages whose decisions follow a drawn image (``_coded_images``): stages 1 and 2 read its mean grey
    (class 2 needs a brighter image), the UNet marks the white pixels for classes 1-3 and nothing for class 4."""
    inputs = keras.Input((*SIZE, 3))
    grey = keras.ops.mean(inputs, axis=-1, keepdims=True)
    mean = keras.layers.Lambda(lambda g: tf.reduce_mean(g, axis=(1, 2)))(grey)
    binary = keras.Model(inputs, keras.layers.Lambda(lambda m: tf.sigmoid((m - 100) / 4))(mean))
    offsets = tf.constant([[-50.0, 20.0, -50.0, -50.0]])
    multilabel = keras.Model(inputs, keras.layers.Lambda(lambda m: tf.sigmoid((m - 100 - offsets) / 4))(mean))
    cuts = tf.constant([[[[200.0, 200.0, 200.0, 400.0]]]])
    unet = keras.Model(inputs, keras.layers.Lambda(lambda g: tf.sigmoid((g - cuts) / 4))(grey))
    return Cascade(binary, multilabel, {0: unet}, SIZE, **kwargs)  # the paper's area limits


def _coded_images(size=(256, 1600)) -> np.ndarray:
    """Ten images: grey backgrounds from 60 to 170, each with a white rectangle of 0 to 40,000 pixels (at 256x1600)
    that, under the paper's limits, is too small, right or too large for classes 1 and 3."""
    backgrounds = [60, 90, 105, 110, 120, 125, 130, 140, 150, 170]
    rectangles = [(0, 0), (40, 60), (20, 20), (40, 60), (100, 400), (80, 100), (20, 20), (0, 0), (40, 60), (100, 400)]
    images = np.zeros((len(backgrounds), 256, 1600, 3), np.uint8)
    for image, grey, (height, width) in zip(images, backgrounds, rectangles, strict=True):
        image[:] = grey
        image[50 : 50 + height, 300 : 300 + width] = 255
    return images if size == (256, 1600) else np.stack([cv2.resize(i, size[::-1], interpolation=cv2.INTER_AREA)
                                                        for i in images])


def _served(path, images) -> dict:
    served = tf.saved_model.load(str(path)).signatures[cascade_module.SERVING_SIGNATURE]
    return {k: v.numpy() for k, v in served(images=tf.constant(images)).items()}


def _assert_same_as_predict(found: dict, results, max_pixels_differ=1e-4):
    """An export's outputs make predict's decisions, and its masks differ from predict's in at most 0.01 % of
    pixels (float noise at the pixel threshold: OpenCV and TensorFlow resize the probabilities)."""
    np.testing.assert_array_equal(found["decisions"], np.stack([r.codes for r in results]))
    masks = np.stack([r.masks for r in results])
    assert found["masks"].shape == masks.shape and found["masks"].dtype == bool
    assert (found["masks"] != masks).mean() <= max_pixels_differ
    np.testing.assert_allclose(found["defect_prob"], [r.defect_prob for r in results], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found["class_probs"], np.stack([r.class_probs for r in results]), rtol=1e-5, atol=1e-6)
    areas = np.stack([[r.areas[c] for c in (1, 2, 3, 4)] for r in results])
    np.testing.assert_allclose(found["areas"], areas, atol=max(2, 1e-3 * areas.max()))


def test_the_exported_savedmodel_decides_as_predict(tmp_path):
    """Every decision code, at the full size (the models at 64x320: each stage resizes inside) and at the models'
    own size, with the paper's gating and with none, and with flip TTA."""
    images = _coded_images()
    cascade = _coded_cascade()
    results = cascade.predict_batch(list(images))
    assert {int(c) for r in results for c in r.codes} == set(range(5))  # NO_DEFECT, ABSENT, EMPTY, OUT_OF_RANGE, KEPT
    found = _served(cascade.export(tmp_path / "paper"), images)
    assert found["masks"].shape == (10, 256, 1600, 4) and found["decisions"].dtype == np.int32
    _assert_same_as_predict(found, results)
    assert np.isnan(found["class_probs"][:2]).all()  # stage 1 said no defect: stage 2 did not run
    assert (found["areas"][:2] == 0).all()
    small = _coded_images(SIZE)
    _assert_same_as_predict(_served(tmp_path / "paper", small), cascade.predict_batch(list(small)))
    for name, settings in (("none", {"gating": "none"}), ("tta", {"tta": "hvflip", "area_filter": False})):
        variant = _coded_cascade(**settings)
        _assert_same_as_predict(_served(variant.export(tmp_path / name), images), variant.predict_batch(list(images)))
    meta = json.loads((tmp_path / "tta" / "assets" / "metadata.json").read_text())
    assert meta["tta"] == "hvflip" and meta["area_filter"] is False and meta["gating"] == "paper"
    assert meta["area_limits_256x1600"]["1"] == [500, 15500] and meta["decision_codes"]["4"] == "kept"
    assert meta["stages"]["binary"] == {"backbone": None, "input_size": [64, 320], "outputs": 1}
    umask = os.umask(0)
    os.umask(umask)
    for exported in (p for p in (tmp_path / "tta").rglob("*") if p.is_file()):  # readable as the user's files are
        assert exported.stat().st_mode & 0o777 == 0o666 & ~umask, exported


def test_the_exported_savedmodel_needs_tensorflow_alone(tmp_path, b0_bundle):
    """A cascade of EfficientNet-B0 models (swish, BatchNormalization, the UNet decoder) exported and run by a
    process that imports TensorFlow only; the metadata asset names backbones, thresholds and versions."""
    _, bundle = b0_bundle
    labels = {1: 0.0, 2: 0.0, 3: 2.0, 4: 0.0}  # every stage runs; class 3 is never segmented
    cascade = Cascade.load(bundle, binary_threshold=0.0, label_thresholds=labels, use_searched=False)
    exported = cascade.export(tmp_path / "savedmodel")
    images = np.random.default_rng(3).integers(0, 256, (2, 256, 1600, 3)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = (
        "import json, sys\nimport numpy as np\nimport tensorflow as tf\n"
        "loaded = tf.saved_model.load(sys.argv[1])\n"
        "found = loaded.signatures['serving_default'](images=tf.constant(np.load(sys.argv[2])))\n"
        "np.savez(sys.argv[3], **{k: v.numpy() for k, v in found.items()})\n"
        "meta = json.loads(open(loaded.metadata.asset_path.numpy()).read())\n"
        "empty = loaded.signatures['serving_default'](images=tf.zeros((0, 256, 1600, 3), tf.uint8))\n"
        "meta['empty'] = {k: v.shape.as_list() for k, v in empty.items()}\n"
        "ours = ('steeldefect', 'segmentation_models', 'efficientnet', 'classification_models')\n"
        "print(json.dumps({'meta': meta, 'imported': sorted(m for m in sys.modules if m.split('.')[0] in ours)}))\n"
    )
    ran = subprocess.run([sys.executable, "-c", script, str(exported), str(tmp_path / "images.npy"),
                          str(tmp_path / "found.npz")], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    assert report["imported"] == []
    meta = report["meta"]
    assert meta.pop("empty") == {"masks": [0, 256, 1600, 4], "defect_prob": [0], "class_probs": [0, 4], "areas": [0, 4],
                                 "decisions": [0, 4]}
    assert {s["backbone"] for s in meta["stages"].values()} == {"efficientnetb0"}
    assert set(meta["stages"]) == {"binary", "multilabel", "segmentation_joint"}
    assert meta["label_thresholds"] == {"1": 0.0, "2": 0.0, "3": 2.0, "4": 0.0} and meta["binary_threshold"] == 0.0
    assert meta["format"] == "savedmodel" and meta["tensorflow_version"] == tf.__version__
    assert set(meta["outputs"]) == set(cascade_module.EXPORT_OUTPUTS)
    found = dict(np.load(tmp_path / "found.npz"))
    _assert_same_as_predict(found, cascade.predict_batch(list(images)))
    assert (found["decisions"][:, 2] == thresholds.ABSENT).all()


def test_the_tflite_cascade_decides_as_the_keras_cascade(tmp_path, capsys, b0_bundle):
    """Each stage as TFLite joined by TFLiteCascade, Cascade's own decision code: float32 stand-ins make predict's
    decisions; EfficientNet-B0 stages in float16 (exported by the command line) give its probabilities to 2e-2
    at half the size of float32 weights."""
    images = _coded_images()
    cascade = _coded_cascade()
    lite = cascade_module.TFLiteCascade.load(cascade.export(tmp_path / "coded", "tflite"))
    _assert_same_as_predict(_outputs(lite.predict_batch(list(images))), cascade.predict_batch(list(images)))
    umask = os.umask(0)
    os.umask(umask)
    for exported in (tmp_path / "coded").iterdir():  # readable as the user's other files are
        assert exported.stat().st_mode & 0o777 == 0o666 & ~umask, exported.name
    stage = sorted((tmp_path / "coded").glob("*.tflite"))[0]
    whole = stage.read_bytes()
    for damage, content in (("truncated", whole[: len(whole) // 3]), ("empty", b""),
                            ("garbage", np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())):
        copy = tmp_path / f"coded-{damage}"
        shutil.copytree(tmp_path / "coded", copy)
        (copy / stage.name).write_bytes(content)
        with pytest.raises(CascadeError, match=re.escape(f"{copy / stage.name} is not a stage this TFLite cascade "
                                                         "can run")):
            cascade_module.TFLiteCascade.load(copy)
    (copy / "metadata.json").write_bytes(whole[:100])  # the metadata overwritten: named, not a traceback
    with pytest.raises(runfiles.RunFileError, match=re.escape(f"{copy / 'metadata.json'} is not valid JSON")):
        cascade_module.TFLiteCascade.load(copy)
    b0, bundle = b0_bundle
    assert cascade_module.main(["export", "--run", str(bundle), str(tmp_path / "lite"), "--format", "tflite",
                                "--precision", "float16", "--tta", "hflip"]) == 0
    assert "TFLiteCascade.load" in capsys.readouterr().out
    meta = json.loads((tmp_path / "lite" / "metadata.json").read_text())
    assert meta["precision"] == "float16" and meta["files"]["segmentation_joint"] == "segmentation_joint.tflite"
    assert cascade_module.TFLiteCascade.load(tmp_path / "lite").tta == "hflip"  # baked in by --tta
    weights = sum(m.count_params() for m in (b0.binary, b0.multilabel, *b0.segmentation.values()))
    assert sum(f.stat().st_size for f in (tmp_path / "lite").glob("*.tflite")) < 0.6 * 4 * weights
    half = cascade_module.TFLiteCascade.load(tmp_path / "lite", gating="none", area_filter=False, tta=None)
    x = np.random.default_rng(4).integers(0, 256, (3, *SIZE, 3)).astype(np.uint8)
    for ours, theirs in zip(half.probabilities(x)[:3], b0.probabilities(x)[:3], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=2e-2)
    with pytest.raises(CascadeError, match="stage is a TFLiteModel, not a Keras model"):
        half.export(tmp_path / "again")


def _outputs(results) -> dict:
    """``CascadeResult``s as the exported SavedModel's outputs."""
    return {"decisions": np.stack([r.codes for r in results]), "masks": np.stack([r.masks for r in results]),
            "defect_prob": np.array([r.defect_prob for r in results]),
            "class_probs": np.stack([r.class_probs for r in results]),
            "areas": np.stack([[r.areas[c] for c in (1, 2, 3, 4)] for r in results])}


def test_export_refuses_what_it_cannot_do(tmp_path, capsys):
    cascade = _coded_cascade()
    with pytest.raises(ValueError, match="format must be one of savedmodel, tflite, got 'onnx'"):
        cascade.export(tmp_path / "x", "onnx")
    with pytest.raises(ValueError, match="precision must be one of float32, float16, got 'int8'"):
        cascade.export(tmp_path / "x", "tflite", precision="int8")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="full exists and is not empty: export into a new folder"):
        cascade.export(tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]
    with pytest.raises(CascadeError, match="metadata.json is missing: not an exported TFLite cascade"):
        cascade_module.TFLiteCascade.load(tmp_path / "full")
    (tmp_path / "full" / "metadata.json").write_text(json.dumps({"format": "savedmodel"}))
    with pytest.raises(CascadeError, match="says format 'savedmodel', not 'tflite'"):
        cascade_module.TFLiteCascade.load(tmp_path / "full")
    assert cascade_module.main(["export", "--run", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "nothing/cascade.json is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_trained_cascade_exports_with_the_same_decisions(tiny_trained, tmp_path):
    """The trained cascade's SavedModel and TFLite stages on the twin's held-out images at 256x1600: the same
    decisions as predict, masks within 0.01 % of pixels (SavedModel, TFLite float32) and a Dice >= 0.99 against
    predict's masks (TFLite float16)."""
    trained, table, root = tiny_trained
    names = table.loc[table["split"] == "test", "ImageId"].head(24)
    images = np.stack([cascade_module._read_image(root / "train_images" / name) for name in names])
    results = trained.predict_batch(list(images))
    assert len({int(c) for r in results for c in r.codes}) >= 3
    _assert_same_as_predict(_served(trained.export(tmp_path / "savedmodel"), images), results)
    lite = cascade_module.TFLiteCascade.load(trained.export(tmp_path / "lite32", "tflite"))
    _assert_same_as_predict(_outputs(lite.predict_batch(list(images))), results)
    half = cascade_module.TFLiteCascade.load(trained.export(tmp_path / "lite16", "tflite", precision="float16"))
    found = np.stack([r.masks for r in half.predict_batch(list(images))])
    expected = np.stack([r.masks for r in results])
    both, total = (found & expected).sum(), found.sum() + expected.sum()
    assert total > 0 and 2 * both / total >= 0.99
