"""Settings and constants shared by every module."""

import pytest

from steeldefect import cascade as cascade_module
from steeldefect.config import TTA_CHOICES, TrainConfig, check_image_size, tta_from_choice


def test_the_command_lines_tta_choices():
    assert [tta_from_choice(c) for c in TTA_CHOICES] == [None, "hflip", "hvflip"]
    assert all(tta_from_choice(c) in cascade_module.TTA_FLIPS for c in TTA_CHOICES)  # what Cascade accepts
    with pytest.raises(ValueError, match=r"--tta must be one of none, hflip, hvflip, got 'vflip'"):
        tta_from_choice("vflip")


def test_a_unets_image_size_is_a_positive_multiple_of_32():
    assert check_image_size([256, 1600]) == (256, 1600) and check_image_size((64.0, 320)) == (64, 320)
    for bad in ((64, 400), (0, 320), (16, 32)):
        with pytest.raises(ValueError, match=rf"a UNet needs image_size \(height, width\) in multiples of 32, got "
                                             rf"{bad[0]}x{bad[1]}"):
            check_image_size(bad)
    with pytest.raises(ValueError, match="^the decoder needs"):
        check_image_size((33, 64), "the decoder")


def test_a_train_config_as_json_has_every_field_with_tuples_as_lists():
    found = TrainConfig(image_size=(128, 800), mixed_precision="mixed_float16").to_json()
    assert found["image_size"] == [128, 800] and found["mixed_precision"] == "mixed_float16"
    assert set(found) == set(TrainConfig.__dataclass_fields__)
    assert TrainConfig(**{**found, "image_size": tuple(found["image_size"])}) == TrainConfig(image_size=(128, 800),
                                                                                           mixed_precision="mixed_float16")
