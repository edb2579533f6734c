"""A run's plan before training: settings from the profile and options, each stage's TrainConfig, the data plan,
the ETA and the first line's estimate."""

import re

import pandas as pd
import pytest

from steeldefect import experiments, report, runplan
from steeldefect.config import PROFILES, TrainConfig

REAL_QUICK_B0_MINUTES = 4.3  # quick, B0, the 43 real images: 4 min 16 s measured (docs/results.md)


def test_eta_scales_the_timed_stages_by_kind_and_work():
    assert runplan.estimate_remaining([], [("unet", 10.0)]) is None
    finished = [("classifier", 100.0, 50.0), ("classifier", 300.0, 250.0), ("unet", 200.0, 400.0)]
    # classifiers: 300 s / 400 units; UNets: 2 s per unit
    assert runplan.estimate_remaining(finished, [("classifier", 40.0), ("unet", 5.0)]) == pytest.approx(40.0)
    # no UNet timed yet: the rate of everything timed (300 s / 400 units)
    assert runplan.estimate_remaining(finished[:2], [("unet", 8.0)]) == pytest.approx(6.0)
    assert runplan.stage_kind("multilabel") == "classifier" and runplan.stage_kind("class3") == "unet"


def test_a_stages_estimate_on_a_literal_case():
    """B0's binary stage, 100 training images (batch 10), 20 validation, 30 test, 2 epochs, at 64x320: a training
    step 19 ms an image (config.STEP_COST_MS), a forward pass a third of it, 60 s to build and trace."""
    config = TrainConfig(image_size=(64, 320), batch_size=10, eval_batch_size=16, epochs=2, bn_recalibration_batches=5)
    counts = {"train": 100, "val": 20, "test": 30}
    step, forward = 19.0, 19.0 / 3
    per_epoch = 100 * step + (20 + 5 * 10) * forward  # train, validate, precise BN on 5 batches of 10
    expected = 60 + (2 * per_epoch + 150 * forward) / 1000  # and the evaluation of every split
    assert runplan.stage_seconds_estimate("efficientnetb0", "binary", counts, config) == pytest.approx(expected)
    # a bigger backbone costs more per image (B4's step 67 ms), larger images by their pixels
    b4 = runplan.stage_seconds_estimate("efficientnetb4", "binary", counts, config) - 60
    assert b4 == pytest.approx((expected - 60) * 67 / 19)
    big = runplan.stage_seconds_estimate("efficientnetb0", "binary", counts, TrainConfig(
        image_size=(128, 640), batch_size=10, epochs=2, bn_recalibration_batches=5)) - 60
    assert big == pytest.approx((expected - 60) * 4)
    # a dry run trains and validates 2 batches an epoch, and evaluates every image
    dry = TrainConfig(image_size=(64, 320), batch_size=10, epochs=2, bn_recalibration_batches=5, max_steps_per_epoch=2)
    assert runplan.stage_seconds_estimate("efficientnetb0", "binary", counts, dry) == pytest.approx(
        60 + (2 * (20 * step + (20 + 2 * 10) * forward) + 150 * forward) / 1000)
    assert runplan.stage_seconds_estimate("efficientnetb0", "binary", {**counts, "train": 0}, config) == 0
    assert [runplan.about(s) for s in (40, 720, 7500)] == ["about 40 s", "about 12 min", "about 2 h 5 min"]


# Runs measured on this 2-core machine (docs/results.md): (options, data, measured minutes). The estimate said before
# a run starts must be within a factor of 2 of each.
MEASURED_RUNS = [
    (["--profile", "smoke"], "twin-48", [2.8, 3.6, 4.9]),
    (["--profile", "smoke", "--backbones", "efficientnetb0"], "twin-48", [1.25]),
    ([], "twin-400", [19.1, 19.7, 27.6, 29.9]),
    (["--profile", "paper", "--backbones", "efficientnetb0", "--encoder-weights", "none", "--epochs", "1",
      "--max-steps-per-epoch", "2"], "twin-1257", [15.5]),
]


@pytest.mark.slow  # writes twins of up to 1,257 images
@pytest.mark.parametrize(("argv", "folder", "measured"), MEASURED_RUNS)
def test_the_estimate_holds_within_a_factor_of_two_of_measured_runs(tmp_path_factory, argv, folder, measured):
    from steeldefect import data, synthetic

    n_images = int(folder.removeprefix("twin-"))
    root = synthetic.make_synthetic_severstal(tmp_path_factory.mktemp(folder) / folder, n_images, seed=0)
    args = experiments._parser().parse_args(argv)
    settings = runplan.resolve_settings(args, PROFILES[args.profile])
    table, _ = data.keep_classes_in_train(data.split_table(data.load_table(root), seed=settings["seed"],
                                                           keep_every_class=False))
    minutes = runplan.estimate_seconds(settings, table)["total"] / 60
    assert all(m / 2 <= minutes <= 2 * m for m in measured), (minutes, measured)


def test_the_estimate_on_the_real_sample_holds(real_dir):
    from steeldefect import data

    args = experiments._parser().parse_args(["--profile", "quick", "--backbones", "efficientnetb0"])
    settings = runplan.resolve_settings(args, PROFILES["quick"])
    table, _ = data.keep_classes_in_train(data.split_table(data.load_table(real_dir), seed=settings["seed"],
                                                           keep_every_class=False))
    minutes = runplan.estimate_seconds(settings, table)["total"] / 60
    assert REAL_QUICK_B0_MINUTES / 2 <= minutes <= 2 * REAL_QUICK_B0_MINUTES, minutes


def test_bn_momentum_follows_where_stage_1_starts():
    from steeldefect.config import starts_from_scratch

    assert starts_from_scratch(None) and starts_from_scratch("stage1") and not starts_from_scratch("imagenet")
    for weights, momentum in (("none", 0.9), ("stage1", 0.9), ("imagenet", None), ("/w/enc.weights.h5", None)):
        args = experiments._parser().parse_args(["--encoder-weights", weights])
        settings = runplan.resolve_settings(args, PROFILES["quick"])
        for stage in ("binary", "multilabel", "joint"):
            assert runplan.train_config(settings, stage).bn_momentum == momentum, (weights, stage)


def test_multilabel_pos_weight_flag_reaches_the_multilabel_config():
    for flag, expected in (([], None), (["--multilabel-pos-weight", "none"], None),
                           (["--multilabel-pos-weight", "balanced"], "balanced"),
                           (["--multilabel-pos-weight", "rare"], "rare")):
        settings = runplan.resolve_settings(experiments._parser().parse_args(flag), PROFILES["quick"])
        assert settings["multilabel_pos_weight"] == expected
        assert runplan.train_config(settings, "multilabel").multilabel_pos_weight == expected
    # a run written before the option existed has no such key: it resumes as the paper's loss
    assert runplan.train_config({k: v for k, v in settings.items() if k != "multilabel_pos_weight"},
                                     "multilabel").multilabel_pos_weight is None


def test_the_data_plan_is_decided_before_training():
    table = pd.DataFrame({"ImageId": [f"{i}.jpg" for i in range(6)],
                          "Defect_1": ["", "", "1 5", "", "", ""], "Defect_2": [""] * 6,
                          "Defect_3": ["1 5", "1 5", "", "", "1 5", ""], "Defect_4": [""] * 6,
                          "split": ["train", "train", "val", "test", "test", "train"]})
    table["has_defect"] = (table[["Defect_1", "Defect_2", "Defect_3", "Defect_4"]] != "").any(axis=1)
    plan = runplan.data_plan(table, ["binary", "multilabel", "class1", "class3"],
                                 bad_images={"9.jpg": "a JPEG that does not decode (corrupt or truncated)"})
    assert plan["stages"]["binary"] == {"train": 3, "val": 1, "test": 2, "not_trainable": None}
    assert plan["stages"]["class1"] == {"train": 0, "val": 1, "test": 0,
                                        "not_trainable": "no training image for stage class1 (train 0, val 1, test 0)"}
    assert plan["stages"]["class3"]["val"] == 0
    assert plan["never_predicted"] == {"1": "no training image of class 1 (1 in the whole data)",
                                       "2": "no training image of class 2 (0 in the whole data)",
                                       "4": "no training image of class 4 (0 in the whole data)"}
    assert report.plan_lines(plan) == [
        "9.jpg left out: a JPEG that does not decode (corrupt or truncated)",
        "stage class1 is not trainable: no training image for stage class1 (train 0, val 1, test 0)",
        "stage class3 trains without validation: no validation image (train 2, val 0, test 1)",
        "class 1 is never predicted: no training image of class 1 (1 in the whole data)",
        "class 2 is never predicted: no training image of class 2 (0 in the whole data)",
        "class 4 is never predicted: no training image of class 4 (0 in the whole data)",
    ]


def test_the_paper_profile_trains_each_stage_as_the_source_did():
    settings = runplan.resolve_settings(experiments._parser().parse_args(["--profile", "paper"]), PROFILES["paper"])
    binary, multilabel = runplan.train_config(settings, "binary"), runplan.train_config(settings, "multilabel")
    unet = runplan.train_config(settings, "class3")
    assert (binary.image_size, binary.batch_size, binary.eval_batch_size) == ((256, 512), 8, 16)
    assert (multilabel.image_size, multilabel.batch_size) == ((256, 512), 8)
    assert (unet.image_size, unet.batch_size, unet.segmentation_loss) == ((256, 800), 4, "sm_dice")
    assert binary.augmentation == unet.augmentation == "source" and binary.encoder_weights == "imagenet"
    assert PROFILES["paper"].stages() == ("binary", "multilabel", "class1", "class2", "class3", "class4")
    # --image-size and --batch-size set every stage's
    args = experiments._parser().parse_args(["--profile", "paper", "--image-size", "128", "416", "--batch-size", "2"])
    small = runplan.resolve_settings(args, PROFILES["paper"])
    assert {(c.image_size, c.batch_size) for c in (runplan.train_config(small, s) for s in ("binary", "class1"))} \
        == {((128, 416), 2)}
    # the other profiles keep one size and one batch, and our augmentation
    quick = runplan.resolve_settings(experiments._parser().parse_args([]), PROFILES["quick"])
    assert runplan.train_config(quick, "binary").image_size == runplan.train_config(quick, "joint").image_size
    assert runplan.train_config(quick, "joint").augmentation == "ours"
    # a run written before per-stage sizes resumes with its one size
    old = {k: v for k, v in quick.items() if k not in ("classifier_image_size", "segmentation_batch_size", "augmentation")}
    assert runplan.train_config(old, "binary").image_size == (64, 320)


def test_a_run_made_before_a_setting_existed_resumes_when_the_setting_keeps_its_old_meaning():
    quick = runplan.resolve_settings(experiments._parser().parse_args([]), PROFILES["quick"])
    settings = {**quick, "train_configs": runplan.train_configs(quick)}
    # config.json of a run made before run_eagerly and freeze_encoder existed: no such keys, nor such fields in its
    # TrainConfigs
    later = ("run_eagerly", "freeze_encoder")
    saved = {k: v for k, v in settings.items() if k not in later}
    saved["train_configs"] = {stage: {k: v for k, v in c.items() if k not in later}
                              for stage, c in settings["train_configs"].items()}
    assert runplan.differing_settings(saved, settings) == []
    frozen = runplan.resolve_settings(experiments._parser().parse_args(["--freeze-encoder", "multilabel"]),
                                   PROFILES["quick"])
    frozen = {**frozen, "train_configs": runplan.train_configs(frozen)}
    assert runplan.differing_settings(saved, frozen) == ["freeze_encoder", "train_configs"]
    # the same run resumed with the setting on is another run, and so is any other difference
    eager = {**settings, "run_eagerly": True,
             "train_configs": {s: {**c, "run_eagerly": True} for s, c in settings["train_configs"].items()}}
    assert runplan.differing_settings(saved, eager) == ["run_eagerly", "train_configs"]
    other = {**settings, "train_configs": {s: {**c, "epochs": 3} for s, c in settings["train_configs"].items()}}
    assert runplan.differing_settings(saved, other) == ["train_configs"]
    assert runplan.differing_settings({**saved, "seed": 1}, settings) == ["seed"]


def test_the_first_line_says_how_long_the_run_takes_and_how_to_get_a_faster_or_fuller_one():
    parse = experiments._parser().parse_args
    line = runplan.first_line(parse([]))
    assert line.startswith("steeldefect: profile default, 5 backbone(s): about ")
    for other in ("--profile smoke (about 5 min", "--profile quick (about 7 h", "--profile paper (GPU work"):
        assert other in line
    minutes = lambda text: int(re.search(r"about (\d+) min on a 2-core CPU", text).group(1))  # noqa: E731
    assert minutes(runplan.first_line(parse(["--backbones", "efficientnetb0"]))) < minutes(line) / 4
    assert ("the estimate for these settings and this data follows once the data is read (the profile: measured 30 "
            "min for its own settings and five backbones)") in runplan.first_line(parse(["--epochs", "5"]))
    assert runplan.first_line(parse(["--profile", "quick", "--backbones", "efficientnetb0"])).startswith(
        "steeldefect: profile quick, 1 backbone(s): the estimate for these settings and this data follows once the "
        "data is read (the profile: about 7 h")  # not "about 7 h" for one backbone on 43 images


def test_freeze_encoder_reaches_the_stages_it_names():
    parse = experiments._parser().parse_args
    for flags, frozen in (([], {"multilabel"}), (["--freeze-encoder", "all"], {"multilabel", "joint"}),
                          (["--freeze-encoder", "none"], set())):
        settings = runplan.resolve_settings(parse(flags), PROFILES["default"])
        assert {s for s in ("binary", "multilabel", "joint")
                if runplan.train_config(settings, s).freeze_encoder} == frozen, flags
    assert runplan.resolve_settings(parse([]), PROFILES["quick"])["freeze_encoder"] == []


def test_the_cache_and_dry_run_options_reach_every_stages_config():
    parse = experiments._parser().parse_args
    for flags, (cache, share, steps) in {(): (True, 0.5, None), ("--cache", "on"): (True, None, None),
                                         ("--cache", "off"): (False, 0.5, None),
                                         ("--max-steps-per-epoch", "3"): (True, 0.5, 3)}.items():
        settings = runplan.resolve_settings(parse(list(flags)), PROFILES["default"])
        for stage in settings["stages"]:
            config = runplan.train_config(settings, stage)
            assert (config.cache, config.cache_max_share, config.max_steps_per_epoch) == (cache, share, steps), flags
    # a run made before these options resumes: their absence means what the defaults mean
    settings = runplan.resolve_settings(parse([]), PROFILES["default"])
    settings["train_configs"] = runplan.train_configs(settings)
    saved = {k: v for k, v in settings.items() if k not in ("cache", "max_steps_per_epoch")}
    saved["train_configs"] = {stage: {k: v for k, v in found.items() if k not in ("cache_max_share", "max_steps_per_epoch")}
                              for stage, found in settings["train_configs"].items()}
    assert runplan.differing_settings(saved, settings) == []
    dry = runplan.resolve_settings(parse(["--max-steps-per-epoch", "3"]), PROFILES["default"])
    dry["train_configs"] = runplan.train_configs(dry)
    assert runplan.differing_settings(saved, dry) == ["max_steps_per_epoch", "train_configs"]
