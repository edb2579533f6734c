import re
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from steeldefect import models, runfiles
from steeldefect.config import BACKBONES

UNET_TRAINABLE_4CLASS = {  # sm.Unet, weights=None, 4 classes, 256x1600
    "efficientnetb0": 10_071_936, "efficientnetb1": 12_577_572, "efficientnetb2": 14_226_182,
    "efficientnetb3": 17_778_988, "efficientnetb4": 25_608_268,
}
ENCODER_PARAMS = {  # efficientnet package, include_top=False
    "efficientnetb0": 4_049_564, "efficientnetb1": 6_575_232, "efficientnetb2": 7_768_562,
    "efficientnetb3": 10_783_528, "efficientnetb4": 17_673_816,
}
SKIPS = ("block6a_expand_activation", "block4a_expand_activation", "block3a_expand_activation",
         "block2a_expand_activation")


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_registry_and_unknown_backbone():
    assert tuple(models.BACKBONES) == BACKBONES
    with pytest.raises(ValueError, match="unknown backbone 'resnet34'; valid: efficientnetb0, efficientnetb1, "
                                         "efficientnetb2, efficientnetb3, efficientnetb4"):
        models.build_unet("resnet34", 1, (64, 320), None)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_parameter_counts_at_full_size(backbone):
    unet = models.build_unet(backbone, 4, (256, 1600), None)
    assert _trainable(unet) == UNET_TRAINABLE_4CLASS[backbone]
    assert models._encoder(backbone, (256, 1600), None).count_params() == ENCODER_PARAMS[backbone]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_and_skip_connections(backbone):
    binary = models.build_classifier(backbone, 1, (64, 320), None)
    multi = models.build_classifier(backbone, 4, (64, 320), None, head="simple")
    unet = models.build_unet(backbone, 1, (64, 320), None)
    joint = models.build_unet(backbone, 4, (64, 320), None)
    assert binary.output_shape == (None, 1) and multi.output_shape == (None, 4)
    assert unet.output_shape == (None, 64, 320, 1) and joint.output_shape == (None, 64, 320, 4)
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 320, 3)).astype(np.uint8)
    masks = joint.predict(x, verbose=0)
    assert masks.shape == (2, 64, 320, 4) and masks.dtype == np.float32 and 0 <= masks.min() <= masks.max() <= 1
    inner = joint.get_layer(index=2)
    for name in SKIPS:
        assert inner.get_layer(name) is not None
    assert sum("concat" in layer.name for layer in inner.layers) == 4  # four decoder blocks join a skip each


def test_paper_head_layers():
    model = models.build_classifier("efficientnetb0", 1, (64, 320), None)
    dense = [layer.units for layer in model.layers if layer.__class__.__name__ == "Dense"]
    dropout = [layer.rate for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert dense == [1024, 512, 64, 1] and dropout == [0.3, 0.3]
    with pytest.raises(ValueError, match="unknown head 'big'"):
        models.build_classifier("efficientnetb0", 1, (64, 320), None, head="big")


def test_image_size_checks():
    with pytest.raises(ValueError, match="multiples of 32, got 64x400.*64x400 fails"):
        models.build_unet("efficientnetb0", 1, (64, 400), None)
    with pytest.raises(ValueError, match="at least 32x32, got 16x320"):
        models.build_classifier("efficientnetb0", 1, (16, 320), None)


def test_preprocess_is_torch_mode():
    out = models.preprocess(np.array([[[0, 255, 128]]], np.uint8)).numpy()
    expected = (np.array([0, 255, 128]) / 255 - np.array(models.IMAGENET_MEAN)) / np.array(models.IMAGENET_STD)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def test_bn_momentum_is_set_everywhere():
    model = models.build_unet("efficientnetb0", 1, (64, 320), None, bn_momentum=0.9)
    layers = models.all_layers(model)
    momenta = {layer.momentum for layer in layers if layer.__class__.__name__ == "BatchNormalization"}
    assert momenta == {0.9}
    classifier = models.build_classifier("efficientnetb0", 1, (64, 320), None, head="paper")
    found = models.all_layers(classifier)  # the encoder is a nested model: its layers are reached too
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in found) == 49 + 2  # encoder + head
    assert len({id(layer) for layer in found}) == len(found)
    if hasattr(classifier, "_flatten_layers"):  # the Keras internal it replaces finds the same layers
        assert {id(x) for x in classifier._flatten_layers(include_self=False)} == {id(x) for x in found}


def test_offline_imagenet_error_names_file_cache_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def offline(file_name):
        raise OSError("URL fetch failure: network is unreachable")

    monkeypatch.setattr(models, "_download", offline)
    with pytest.raises(models.WeightsUnavailableError) as info:
        models.build_classifier("efficientnetb2", 1, (64, 320), "imagenet")
    message = str(info.value)
    assert "efficientnet-b2_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5" in message
    assert str(tmp_path / "keras" / "models") in message and "~/.keras/models" in message
    assert "encoder_weights=None" in message and "encoder_weights='/path/to/" in message
    with pytest.raises(FileNotFoundError, match="encoder weights file .*nope.h5 does not exist"):
        models.build_unet("efficientnetb0", 1, (64, 320), tmp_path / "nope.h5")


def test_encoder_weights_from_a_local_file(tmp_path):
    encoder = models._encoder("efficientnetb0", (64, 320), None)
    path = tmp_path / "encoder.weights.h5"
    encoder.save_weights(path)
    reference = encoder.get_layer("block3a_expand_conv").get_weights()[0]
    unet = models.build_unet("efficientnetb0", 1, (64, 320), path)
    np.testing.assert_array_equal(unet.get_layer(index=2).get_layer("block3a_expand_conv").get_weights()[0], reference)
    classifier = models.build_classifier("efficientnetb0", 1, (64, 320), str(path))
    np.testing.assert_array_equal(
        classifier.get_layer(index=2).get_layer("block3a_expand_conv").get_weights()[0], reference)
    fresh = models.build_unet("efficientnetb0", 1, (64, 320), None)
    assert not np.array_equal(fresh.get_layer(index=2).get_layer("block3a_expand_conv").get_weights()[0], reference)


def test_a_damaged_encoder_weights_file_is_named(tmp_path):
    """A --encoder-weights file (or a run's encoder.weights.h5) cut short, emptied or overwritten: one RunFileError
    naming it, before any training."""
    good = tmp_path / "encoder.weights.h5"
    models._encoder("efficientnetb0", (32, 160), None).save_weights(good)
    whole = good.read_bytes()
    rng = np.random.default_rng(1)
    for damage, content in (("truncated", whole[: len(whole) // 3]), ("empty", b""),
                            ("garbage", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())):
        path = tmp_path / f"{damage}.weights.h5"
        path.write_bytes(content)
        with pytest.raises(runfiles.RunFileError, match=re.escape(f"encoder weights file {path} cannot be read")):
            models.build_classifier("efficientnetb0", 1, (32, 160), str(path), head="simple")


def test_save_then_load_in_a_fresh_process_predicts_identically(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (2, 64, 320, 3)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    for kind, model, spec in (
        ("unet", models.build_unet("efficientnetb1", 2, (64, 320), None), None),
        ("classifier", models.build_classifier("efficientnetb0", 4, (64, 320), None, head="simple"), "simple"),
    ):
        directory = tmp_path / kind
        models.save_model(model, directory, models.model_spec(model, kind, model.name.split("_")[0], head=spec))
        expected = model.predict(x, verbose=0)
        script = textwrap.dedent(f"""
            import numpy as np
            from steeldefect import models
            model = models.load_model({str(directory)!r})
            np.save({str(directory / 'out.npy')!r}, model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))
        """)
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
        np.testing.assert_array_equal(np.load(directory / "out.npy"), expected)
    (tmp_path / "unet" / models.WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="model.weights.h5 is missing"):
        models.load_model(tmp_path / "unet")


def test_save_encoder_weights_wants_a_classifier(tmp_path):
    unet = models.build_unet("efficientnetb0", 1, (64, 320), None)
    with pytest.raises(ValueError, match="efficientnetb0_unet1: not a classifier from build_classifier"):
        models.save_encoder_weights(unet, tmp_path / "encoder.weights.h5")
    assert not list(tmp_path.iterdir())


def test_saved_weights_leave_out_the_optimizer(tmp_path):
    import h5py

    from steeldefect import training
    from steeldefect.config import TrainConfig

    model = training.build_stage_model("efficientnetb0", "multilabel", TrainConfig(image_size=(64, 320), head="simple"))
    optimizer = model.optimizer
    models.save_model(model, tmp_path, models.spec_of(model))
    with h5py.File(tmp_path / models.WEIGHTS_FILE) as saved:
        assert "optimizer" not in saved and "layers" in saved
    assert model.optimizer is optimizer  # the model can go on training
    loaded = models.load_model(tmp_path)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_weights_file_is_named_not_a_traceback(tmp_path):
    """A weights file cut short, emptied or overwritten (a failed copy, a full disk) gives one RunFileError that
    names the file and says what to do; h5py's OSError never reaches the user."""
    model = models.build_classifier("efficientnetb0", 1, (32, 160), None, head="simple")
    models.save_model(model, tmp_path / "good", models.spec_of(model))
    whole = (tmp_path / "good" / models.WEIGHTS_FILE).read_bytes()
    rng = np.random.default_rng(0)
    for damage, content in (("truncated", whole[: len(whole) // 3]), ("empty", b""),
                            ("garbage", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())):
        folder = tmp_path / damage
        shutil.copytree(tmp_path / "good", folder)
        (folder / models.WEIGHTS_FILE).write_bytes(content)
        with pytest.raises(runfiles.RunFileError, match=re.escape(f"{folder / models.WEIGHTS_FILE} is damaged")) as err:
            models.load_model(folder)
        assert "retrain that stage" in str(err.value), damage
    assert models.load_model(tmp_path / "good").count_params() == model.count_params()


@pytest.mark.parametrize("kind", ["classifier", "unet"])
def test_a_frozen_encoder_keeps_its_weights_and_statistics_while_the_rest_trains(kind):
    keras.utils.set_random_seed(0)
    size = (64, 320)
    model = (models.build_classifier("efficientnetb0", 4, size, None, head="simple") if kind == "classifier"
             else models.build_unet("efficientnetb0", 4, size, None))
    total = model.count_params()
    frozen = models.freeze_encoder(model)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    if kind == "classifier":
        assert trainable == 1280 * 4 + 4  # the head: B0's 1280 pooled features to 4 outputs
    else:
        assert 0.5 * total < trainable < 0.7 * total  # the decoder (B0's encoder holds ~4.0 M of ~10.1 M)
    assert frozen > 200
    encoder_names = {layer.name for layer in models._encoder("efficientnetb0", size, None).layers}
    before = [(v, v.numpy().copy()) for v in model.variables]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", run_eagerly=True)
    images = np.random.default_rng(0).integers(0, 256, (4, *size, 3)).astype(np.uint8)
    target = np.ones((4, 4), np.float32) if kind == "classifier" else np.ones((4, *size, 4), np.float32)
    model.train_on_batch(images, target)
    changed = {v.path for v, value in before if not np.array_equal(value, v.numpy())}
    in_encoder = {v.path for v, _ in before if v.path.split("/")[-2] in encoder_names}
    assert in_encoder and not changed & in_encoder  # weights and BatchNormalization statistics of the encoder
    assert changed  # the head / decoder trained
    with pytest.raises(ValueError, match="freeze_encoder takes a classifier or UNet built by"):
        models.freeze_encoder(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]))
