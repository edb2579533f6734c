"""steeldefect.cascade.export: one SavedModel that decides as predict does, TFLite stages, and what export refuses."""

import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from steeldefect import cascade as cascade_module
from steeldefect import runfiles, thresholds
from steeldefect.cascade import Cascade, CascadeError

from .stand_ins import SIZE


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
    images = np.stack([cascade_module.read_image(root / "train_images" / name) for name in names])
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


def test_the_savedmodels_metadata_goes_on_the_archives_root_or_fails_clearly(tmp_path):
    """The asset sits on ExportArchive's Keras-private root trackable: this fails first when Keras renames it."""
    from keras.export import ExportArchive

    from steeldefect.cascade import export

    root = getattr(ExportArchive(), "_tf_trackable", None)
    assert root is not None and hasattr(root, "_track_trackable"), "keras' ExportArchive changed: see export._attach_asset"
    path = tmp_path / "metadata.json"
    path.write_text("{}")
    archive = ExportArchive()
    export._attach_asset(archive, "metadata", tf.saved_model.Asset(str(path)))
    assert archive._tf_trackable.metadata.asset_path.numpy().decode().endswith("metadata.json")
    with pytest.raises(CascadeError, match=r"ExportArchive has no _tf_trackable, where the export puts metadata: "
                                           r"export --format tflite works"):
        export._attach_asset(object(), "metadata", tf.saved_model.Asset(str(path)))
