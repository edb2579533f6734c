import json
import re
import shutil

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from steeldefect import cascade as cascade_module
from steeldefect import rle, runfiles
from steeldefect.cascade import Cascade, CascadeError

from .stand_ins import IMAGE, SIZE, constant_classifier, constant_unet, make, square


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


def test_save_names_the_models_inside_its_folder_and_copies_the_others(tmp_path, b0_bundle):
    """A run directory's cascade.json names its stages' folders (no copy); a bundle elsewhere gets its own models."""
    _, bundle = b0_bundle
    run = tmp_path / "run"
    folders = {"binary": run / "efficientnetb0" / "binary", "multilabel": run / "efficientnetb1" / "multilabel",
               "segmentation": {0: run / "efficientnetb0" / "segmentation" / "joint"}}
    for source, target in (("binary", folders["binary"]), ("multilabel", folders["multilabel"]),
                           ("segmentation/joint", folders["segmentation"][0])):
        shutil.copytree(bundle / source, target)
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    cascade = Cascade.from_folders(folders, SIZE, tta="hflip", validation={"paper_rule": 0.5})
    cascade.save(run)
    spec = json.loads((run / "cascade.json").read_text())
    assert (spec["binary"], spec["multilabel"], spec["segmentation"]) == (
        "efficientnetb0/binary", "efficientnetb1/multilabel", {"0": "efficientnetb0/segmentation/joint"})
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "cascade.json"} == stamps
    assert sorted(p.name for p in run.iterdir()) == ["cascade.json", "efficientnetb0", "efficientnetb1"]
    loaded = Cascade.load(run)
    assert (loaded.tta, loaded.validation, loaded.image_size) == ("hflip", {"paper_rule": 0.5}, SIZE)
    copy = loaded.save(tmp_path / "bundle")  # outside the run: a self-contained bundle
    spec = json.loads((copy / "cascade.json").read_text())
    assert (spec["binary"], spec["segmentation"]) == ("binary", {"0": "segmentation/joint"})
    assert (copy / "segmentation" / "joint" / "model.weights.h5").is_file()
    assert Cascade.load(copy).validation == {"paper_rule": 0.5}


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


@pytest.mark.parametrize("submission_format", ["2020", "2019"])
def test_a_submission_is_written_as_it_goes_and_continued_after_a_kill(tmp_path, submission_format):
    rles = {"a.jpg": {1: "", 2: "5 3", 3: "", 4: "1 10 20 5"}, "b.jpg": dict.fromkeys((1, 2, 3, 4), ""),
            "c.jpg": {1: "7 7", 2: "", 3: "100 2", 4: ""}}
    rows = [(name, c, found[c]) for name, found in rles.items() for c in (1, 2, 3, 4)]
    expected = cascade_module.write_submission(cascade_module.submission_frame(rows, submission_format),
                                               tmp_path / "whole.csv").read_text()
    path = tmp_path / "out" / "submission.csv"
    writer = cascade_module.SubmissionWriter(path, submission_format)
    writer.add("a.jpg", rles["a.jpg"])
    writer.add("b.jpg", rles["b.jpg"])
    writer.abandon()  # killed: the two images are in the partial file, the submission does not exist yet
    assert not path.exists() and writer.partial.read_text().count("\n") == 9
    with open(writer.partial, "a") as handle:
        handle.write(expected.splitlines()[9][:6])  # c.jpg's first row, cut short by the kill
    again = cascade_module.SubmissionWriter(path, submission_format)
    assert again.done == ["a.jpg", "b.jpg"]  # the cut row does not count, and is gone from the file
    again.add("c.jpg", rles["c.jpg"])
    assert again.close() == path and path.read_text() == expected and not again.partial.exists()
    with open(again.partial, "w") as handle:
        handle.write("Image,Pixels\n")
    with pytest.raises(ValueError, match=rf"submission.csv.partial is not a {submission_format} submission in "
                                         r"progress \(its header is Image,Pixels\): delete it or write elsewhere"):
        cascade_module.SubmissionWriter(path, submission_format)


def test_the_command_line_continues_a_submission_it_was_stopped_in(twin, tmp_path, capsys, b0_bundle):
    root, _ = twin
    _, bundle = b0_bundle
    images = sorted((root / "test_images").iterdir())
    whole, resumed = tmp_path / "whole.csv", tmp_path / "resumed.csv"
    assert cascade_module.main(["--run", str(bundle), str(root / "test_images"), "--submission", str(whole)]) == 0
    assert f"submission: {whole} (12 rows, 3 images)" in capsys.readouterr().out
    first = whole.read_text().splitlines()[:5]  # the header and the first image's four rows: what a kill left
    (tmp_path / "resumed.csv.partial").write_text("\n".join(first) + "\n")
    assert cascade_module.main(["--run", str(bundle), str(root / "test_images"), "--submission", str(resumed)]) == 0
    out = capsys.readouterr().out
    assert "continuing" in out and "1 of 3 images are in it, 2 to predict" in out
    assert f"{images[0].name}: defect" not in out and all(f"{p.name}: defect" in out for p in images[1:])
    assert resumed.read_text() == whole.read_text()


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
        cascade_module.read_image(folder / "0000cut.jpg")
    df = cascade_module.predict_dir(folder, make())
    assert sorted(set(df["ImageId"])) == sorted(p.name for p in good) and len(df) == 8
    assert list(df.attrs["skipped"]) == ["0000cut.jpg"]

    _, bundle = b0_bundle
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
    monkeypatch.setattr(cascade_module.core, "_default", None)
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
        cascade_module.read_image(tmp_path / "cut.jpg")
    assert cascade_module.read_image(source).shape == (256, 1600, 3)  # the whole file reads


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


def test_flip_tta_averages_each_stage_over_the_flipped_copies():
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


def test_tta_is_saved_with_the_cascade_and_chosen_on_load_and_on_the_command_line(tmp_path, capsys, monkeypatch,
                                                                                   b0_bundle):
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
    decoded = cascade_module.read_image(path)
    # The untrained model's two probabilities may print alike at 2 decimals: the cascade the command line predicts
    # with is checked too, so that a --tta the command ignored fails here.
    used = []
    predict_with = cascade_module.cli.iter_predict
    monkeypatch.setattr(cascade_module.cli, "iter_predict", lambda paths, c: used.append(c.tta) or predict_with(paths, c))
    for option, expected in (("none", cascade.predict(decoded).defect_prob),
                             ("hflip", flipped.predict(decoded).defect_prob)):
        assert cascade_module.main(["--run", str(saved), "--tta", option, str(path)]) == 0
        assert f"image.jpg: defect p={expected:.2f}" in capsys.readouterr().out
    assert cascade_module.main(["--run", str(saved), str(path)]) == 0  # without --tta: the saved cascade's
    assert used == [None, "hflip", "hflip"]


# ----- export: one SavedModel, TFLite stages
