"""Tables, lines and figures of the report, from literal run files."""

import pytest

from steeldefect import report


def test_wall_time_lines_name_what_was_not_timed():
    timing = {"total_s": 1800.0, "final_s": 60.0, "stages_s": {"efficientnetb0/binary": 600.0,
                                                               "efficientnetb0/joint": None}}
    lines = report._wall_time_lines(timing)
    assert lines[0].startswith("Wall time: 30.0 min, without 1 of the 2 stages, whose time was not recorded")
    table = "\n".join(lines)
    assert "| efficientnetb0 |     10.0 |         |" in table
    assert "the last process only" in report._wall_time_lines({"total_s": 60.0})[0]  # a timing.json without stage times
    assert report.untimed_note(timing["stages_s"]) == ", without 1 of the 2 stages, whose time was not recorded"
    assert report.untimed_note({"efficientnetb0/binary": 600.0}) == ""  # the console's "done in" line adds nothing


def test_cascade_table_counts_and_the_all_empty_reference():
    def variant(dice, presence):
        return {"kaggle_mean_dice": dice, "per_class_dice": {"class1": dice, "class2": dice},
                "presence": {c: dict(zip(("tp", "fp", "fn", "tn"), counts, strict=True))
                             for c, counts in zip(("class1", "class2"), presence, strict=True)}}
    results = {"split": "test", "n_images": 10, "image_size": [64, 320],
               "variants": {"paper cascade": variant(0.9, [(0, 0, 2, 8), (3, 1, 1, 5)]),
                            "no gating": variant(0.7, [(2, 3, 0, 5), (4, 4, 0, 2)])}}
    frame = report.cascade_table(results)
    assert list(frame.index) == ["paper cascade", "no gating", report.EMPTY_REFERENCE]
    assert frame.loc["paper cascade", "tp/fp/fn class1"] == "0/0/2"
    assert frame.loc["no gating", "tp/fp/fn class2"] == "4/4/0"
    # empty everywhere: Dice 1 on the 8 images without class 1 and the 6 without class 2, 0 on the rest
    empty = frame.loc[report.EMPTY_REFERENCE]
    assert (empty["Dice class1"], empty["Dice class2"]) == (0.8, 0.6)
    assert empty["Kaggle mean Dice"] == pytest.approx(0.7)
    assert (empty["tp/fp/fn class1"], empty["tp/fp/fn class2"]) == ("0/0/2", "0/0/4")


def test_the_report_says_when_the_paper_rule_is_below_all_empty_on_validation():
    below = report.validation_line({"paper_rule": 0.79512, "searched": 0.8625, "all_empty": 0.8625})
    assert below.startswith("On the validation split the cascade's Kaggle mean Dice is 0.7951 by the paper's rule "
                            "and 0.8625 with the searched thresholds; predicting every mask empty scores 0.8625.")
    assert "**The paper's rule scores below predicting no defect here**" in below
    above = report.validation_line({"paper_rule": 0.905, "searched": 0.909, "all_empty": 0.867})
    assert "0.9050 by the paper's rule" in above and "below" not in above


def test_the_wall_time_section_has_each_stages_peak_memory_and_the_phases_after_training():
    timing = {"total_s": 600.0, "final_s": 60.0, "stages_s": {"efficientnetb0/binary": 300.0, "efficientnetb0/joint": 240.0},
              "stages_peak_rss_gib": {"efficientnetb0/binary": 1.5, "efficientnetb0/joint": None},
              "phases": {"validation: every stage, threshold search": {"seconds": 120.0, "images": 2263,
                                                                       "images_per_s": 18.86, "peak_rss_gib": 2.25}}}
    text = "\n".join(report._wall_time_lines(timing))
    assert "Peak memory (RSS) per stage in GiB, training and evaluating it (blank: not recorded):" in text
    assert "| efficientnetb0 |     1.50 |         |" in text
    assert "| validation: every stage, threshold search |      2.00 |     2263 |      18.86 |             2.25 |" in text, text
    config = {"max_steps_per_epoch": 5}
    assert report.dry_run_text(config).startswith("at most 5 training and validation batches per epoch")
