import math

import numpy as np
import pandas as pd
import pytest

from steeldefect import data, paper, rle

HEADER_2020 = "ImageId,ClassId,EncodedPixels\n"
HEADER_2019 = "ImageId_ClassId,EncodedPixels\n"


def make_layout(root, csv_text, image_ids):
    (root / "train_images").mkdir(parents=True)
    for image_id in image_ids:
        (root / "train_images" / image_id).write_bytes(b"")  # the data layer reads names, not pixels
    (root / "train.csv").write_text(csv_text)
    return root


@pytest.fixture
def layout(tmp_path):
    csv = HEADER_2020 + "a.jpg,1,1 10\na.jpg,3,100 5 300 20\nb.jpg,2,50 7\n"
    return make_layout(tmp_path / "d", csv, ["a.jpg", "b.jpg", "c.jpg"])


def test_read_annotations_2020(layout):
    rows = data.read_annotations(layout / "train.csv")
    assert list(rows.columns) == ["ImageId", "ClassId", "EncodedPixels", "line"]
    assert rows["ClassId"].tolist() == [1, 3, 2]
    assert rows["line"].tolist() == [2, 3, 4]
    assert rows["EncodedPixels"].tolist() == ["1 10", "100 5 300 20", "50 7"]


def test_2019_and_2020_formats_give_the_same_table(tmp_path, layout):
    csv_2019 = HEADER_2019 + "".join(
        f"{image}_{c},{ {('a.jpg', 1): '1 10', ('a.jpg', 3): '100 5 300 20', ('b.jpg', 2): '50 7'}.get((image, c), '') }\n"
        for image in ("a.jpg", "b.jpg", "c.jpg")
        for c in (1, 2, 3, 4)
    )
    old = make_layout(tmp_path / "old", csv_2019, ["a.jpg", "b.jpg", "c.jpg"])
    pd.testing.assert_frame_equal(data.load_table(old), data.load_table(layout))


def test_load_table_pivots_one_row_per_image(layout):
    table = data.load_table(layout)
    assert table["ImageId"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert table["Defect_1"].tolist() == ["1 10", "", ""]
    assert table["Defect_2"].tolist() == ["", "50 7", ""]
    assert table["Defect_3"].tolist() == ["100 5 300 20", "", ""]
    assert table["Defect_4"].tolist() == ["", "", ""]
    assert table["n_defects"].tolist() == [2, 1, 0]
    assert table["has_defect"].tolist() == [True, True, False]
    assert table["has_defect"].dtype == bool
    assert data.class_labels(table).tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_real_excerpt_2019_format(real_excerpt, tmp_path):
    rows = data.read_annotations(real_excerpt)
    assert rows[["ImageId", "ClassId"]].values.tolist() == [["0002cc93b.jpg", 1], ["0007a71bf.jpg", 3], ["0014fce06.jpg", 3]]
    image_ids = sorted({line.split("_")[0] for line in real_excerpt.read_text().splitlines()[1:]})
    root = make_layout(tmp_path / "real", real_excerpt.read_text(), image_ids)
    table = data.load_table(root)
    assert len(table) == 9 and table["has_defect"].sum() == 3
    stats = data.dataset_stats(table)
    assert stats.rows_per_class == {1: 1, 2: 0, 3: 2, 4: 0}
    assert stats.images_by_n_classes == {0: 6, 1: 3, 2: 0, 3: 0, 4: 0}
    assert stats.areas[1].tolist() == [4396] and sorted(stats.areas[3].tolist()) == [4851, 6897]


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("", r"train.csv: the file is empty; expected a header ImageId,ClassId,EncodedPixels"),
        ("Image,Class,Pixels\na.jpg,1,1 1\n", r"train.csv: unknown header Image,Class,Pixels; expected"),
        (HEADER_2020 + "a.jpg,5,1 1\n", r"train.csv, line 2: ClassId '5' is not one of 1, 2, 3, 4"),
        (HEADER_2020 + "a.jpg,x,1 1\n", r"line 2: ClassId 'x' is not one of"),
        (HEADER_2020 + "a.jpg,1,1 1\na.jpg,1,5 1\n", r"line 3: duplicate row for image a.jpg class 1 \(first at line 2\)"),
        (HEADER_2020 + "a.jpg,2,1 2 3\n", r"line 2: invalid EncodedPixels for class 2: .*odd number of tokens"),
        (HEADER_2020 + "a.jpg,2,409600 5\n", r"line 2: invalid EncodedPixels .* past the last pixel"),
        (HEADER_2020 + "a.jpg,2,\n", r"line 2: EncodedPixels is empty; the 2020 release lists defect rows only"),
        (HEADER_2020 + "../a.jpg,1,1 1\n", r"line 2: ImageId '../a.jpg' must be a plain file name"),
        (HEADER_2020 + "sub/a.jpg,1,1 1\n", r"line 2: ImageId 'sub/a.jpg' must be a plain file name"),
        (HEADER_2020 + ",1,1 1\n", r"line 2: ImageId is empty"),
        (HEADER_2019 + "a.jpg1,1 1\n", r"line 2: ImageId_ClassId 'a.jpg1' is not of the form"),
        (HEADER_2020 + "a.jpg,1,1 1\nzzz.jpg,3,5 5\n", r"line 3: image zzz.jpg is not in .*train_images"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, csv, message):
    root = make_layout(tmp_path / "bad", csv, ["a.jpg"])
    with pytest.raises(data.DataError, match=message):
        data.load_table(root)


def test_missing_layout_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected the Kaggle layout, train.csv and train_images/.*missing train.csv"):
        data.load_table(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such annotation file"):
        data.read_annotations(tmp_path / "nope.csv")
    root = make_layout(tmp_path / "empty", HEADER_2020, [])
    with pytest.raises(data.DataError, match=r"train_images: no .jpg images"):
        data.load_table(root)


def test_header_only_csv_means_all_images_defect_free(tmp_path):
    table = data.load_table(make_layout(tmp_path / "clean", HEADER_2020, ["a.jpg", "b.jpg"]))
    assert table["has_defect"].tolist() == [False, False]


def test_skip_reports_what_it_skipped(tmp_path):
    csv = HEADER_2020 + "a.jpg,1,1 10\na.jpg,7,1 1\nb.jpg,2,5 3 1 1\nzzz.jpg,3,5 5\nb.jpg,4,100 4\n"
    root = make_layout(tmp_path / "s", csv, ["a.jpg", "b.jpg"])
    with pytest.raises(data.DataError):
        data.load_table(root)
    table, skipped = data.load_table(root, on_error="skip")
    assert [(s.line, s.image_id) for s in skipped] == [(3, "a.jpg"), (4, "b.jpg"), (5, "zzz.jpg")]
    assert "ClassId '7'" in skipped[0].reason and "overlaps" in skipped[1].reason and "not in" in skipped[2].reason
    assert all(s.file.endswith("train.csv") for s in skipped)
    assert table["Defect_1"].tolist() == ["1 10", ""] and table["Defect_4"].tolist() == ["", "100 4"]
    rows, skipped_rows = data.read_annotations(root / "train.csv", on_error="skip")
    assert len(rows) == 3 and len(skipped_rows) == 2
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        data.load_table(root, on_error="ignore")


def _table_with_strata(counts, seed=0):
    """A table whose images carry the given class sets, ``counts`` = {class ids tuple: n images}."""
    rows = []
    for classes, n in counts.items():
        for _ in range(n):
            rows.append({f"Defect_{c}": ("1 1" if c in classes else "") for c in (1, 2, 3, 4)})
    table = pd.DataFrame(rows)
    table.insert(0, "ImageId", [f"{i:09x}.jpg" for i in range(len(table))])
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


PAPER_LIKE = {(): 5902, (3,): 4700, (1,): 700, (4,): 600, (2,): 239, (1, 3): 300, (3, 4): 120, (2, 3): 5, (1, 2, 3): 2}


def test_split_reproduces_the_paper_sizes():
    table = _table_with_strata(PAPER_LIKE)
    assert len(table) == paper.N_IMAGES
    split = data.split_table(table)
    assert split["split"].value_counts().to_dict() == paper.SPLIT_SIZES
    assert split["ImageId"].tolist() == table["ImageId"].tolist()


def test_split_is_seeded_and_stratified():
    table = _table_with_strata(PAPER_LIKE)
    a, b = data.split_table(table, seed=42), data.split_table(table, seed=42)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != data.split_table(table, seed=7)["split"].tolist()
    strata = data.stratify_labels(table)
    for stratum in np.unique(strata):
        share = (a["split"][strata == stratum] == "test").mean()
        assert math.isclose(share, 0.10, abs_tol=0.02), (stratum, share)


def test_stratum_priority():
    table = _table_with_strata({(1, 3): 1, (2, 3): 1, (3, 4): 1, (3,): 1, (): 1, (1, 2, 3): 1, (1, 4): 1})
    expected = {(1, 3): 1, (2, 3): 2, (3, 4): 4, (3,): 3, (): 0, (1, 2, 3): 2, (1, 4): 4}
    got = {
        tuple(c for c in (1, 2, 3, 4) if row[f"Defect_{c}"]): s
        for (_, row), s in zip(table.iterrows(), data.stratify_labels(table), strict=True)
    }
    assert got == expected


def test_split_of_a_tiny_table_still_works():
    table = _table_with_strata({(): 10, (3,): 8, (2,): 1, (4,): 1})
    split = data.split_table(table)
    assert split["split"].value_counts().to_dict() == {"train": 14, "val": 4, "test": 2}
    with pytest.raises(data.DataError, match="at least 3 images, got 2"):
        data.split_table(table.head(2))


def test_dataset_stats_exact():
    table = pd.DataFrame(
        {
            "ImageId": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
            "Defect_1": ["1 10", "", "", ""],
            "Defect_2": ["", "", "", ""],
            "Defect_3": ["5 5 20 5", "1 3", "", ""],
            "Defect_4": ["", "7 100", "", "1 1"],
        }
    )
    stats = data.dataset_stats(table)
    assert stats.n_images == 4
    assert stats.rows_per_class == {1: 1, 2: 0, 3: 2, 4: 2}
    assert stats.images_by_n_classes == {0: 1, 1: 1, 2: 2, 3: 0, 4: 0}
    assert stats.areas[3].tolist() == [10, 3] and stats.areas[4].tolist() == [100, 1]
    assert stats.areas[2].dtype == np.int64 and stats.areas[2].size == 0
    assert stats.to_dict()["area_percentiles"][2][50] is None
    assert rle.area(table["Defect_4"][1]) == 100


def test_examples_show_each_class_first():
    table = pd.DataFrame({"ImageId": list("abcde"), "Defect_1": ["", "1 1", "", "", ""],
                          "Defect_2": ["", "", "", "1 1", ""], "Defect_3": ["1 1", "", "1 1", "", ""],
                          "Defect_4": [""] * 5, "has_defect": [True, True, True, True, False]})
    assert data.examples(table, 3)["ImageId"].tolist() == ["b", "d", "a"]
    assert data.examples(table, 10)["ImageId"].tolist() == ["b", "d", "a", "c"]  # defect-free images never


def test_with_split_reads_a_runs_splits_and_names_what_is_missing(tmp_path):
    table = pd.DataFrame({"ImageId": ["a.jpg", "b.jpg"], "Defect_1": ["", ""]})
    path = tmp_path / "splits.csv"
    path.write_text("ImageId,split\na.jpg,train\nb.jpg,test\n")
    assert data.with_split(table, path)["split"].tolist() == ["train", "test"]
    path.write_text("ImageId,split\na.jpg,train\n")
    with pytest.raises(data.DataError, match=r"splits.csv: 1 image\(s\) of the table have no split, e.g. b.jpg"):
        data.with_split(table, path)
    path.write_text("image,part\na.jpg,train\n")
    with pytest.raises(data.DataError, match="expected the columns ImageId,split, got image,part"):
        data.with_split(table, path)
    for damaged in (b"", bytes(range(128, 256)) * 4):  # emptied, overwritten with bytes that are not text
        path.write_bytes(damaged)
        with pytest.raises(data.DataError, match=r"splits.csv is damaged \(.*\): delete it to have the split made again"):
            data.with_split(table, path)


def test_a_class_the_split_left_out_of_train_gets_one_image():
    table = pd.DataFrame({"ImageId": [f"{i}.jpg" for i in range(6)], "split": ["train", "train", "val", "val",
                                                                              "test", "test"]})
    for column in ("Defect_1", "Defect_2", "Defect_3", "Defect_4"):
        table[column] = ""
    table.loc[[2, 4], "Defect_2"] = "1 5"  # class 2 only in validation and test
    table.loc[[5], "Defect_4"] = "1 5"  # class 4 only in test
    table.loc[[0], "Defect_3"] = "1 5"
    moved_table, moved = data.keep_classes_in_train(table)
    assert moved == [{"ImageId": "2.jpg", "class_id": 2, "from": "val"},
                     {"ImageId": "5.jpg", "class_id": 4, "from": "test"}]
    assert moved_table["split"].tolist() == ["train", "train", "train", "val", "test", "train"]
    assert data.keep_classes_in_train(moved_table)[1] == []  # nothing left to move
    assert table["split"].tolist()[2] == "val"  # the input is not changed


def test_split_keeps_every_class_in_train_on_a_small_folder():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"ImageId": [f"{i:03d}.jpg" for i in range(30)]})
    for column in ("Defect_1", "Defect_2", "Defect_3", "Defect_4"):
        table[column] = ""
    table.loc[rng.choice(30, 12, replace=False), "Defect_3"] = "1 5"
    table.loc[[7], "Defect_1"] = "1 5"  # one image of class 1: wherever the split puts it, it trains
    table["has_defect"] = (table[["Defect_1", "Defect_2", "Defect_3", "Defect_4"]] != "").any(axis=1)
    for seed in range(8):
        split = data.split_table(table, seed=seed)
        assert split.loc[7, "split"] == "train", seed
    untouched = data.split_table(table, seed=0, keep_every_class=False)
    assert set(untouched["split"]) == {"train", "val", "test"}


def test_check_images_names_each_bad_file(tmp_path):
    import cv2

    images = tmp_path / "train_images"
    images.mkdir()
    steel = np.full((256, 1600, 3), 90, np.uint8)
    cv2.imwrite(str(images / "good.jpg"), steel)
    encoded = (images / "good.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(encoded[: len(encoded) // 2])
    cv2.imwrite(str(images / "small.jpg"), steel[:128, :800])
    cv2.imwrite(str(images / "png.jpg"), steel)  # written as JPEG, then replaced by a PNG under the same name
    (images / "png.jpg").write_bytes(cv2.imencode(".png", steel)[1].tobytes())
    (images / "text.jpg").write_text("not an image")
    bad = data.check_images(images, ["good.jpg", "cut.jpg", "small.jpg", "png.jpg", "text.jpg", "gone.jpg"])
    assert list(bad) == ["cut.jpg", "small.jpg", "png.jpg", "text.jpg", "gone.jpg"]
    assert bad["cut.jpg"] == "a JPEG that does not decode (corrupt or truncated)"
    assert bad["small.jpg"] == "800x128 pixels, expected 1600x256 (the size the masks in train.csv refer to)"
    assert bad["png.jpg"] == "a PNG image, expected a JPEG"
    assert bad["text.jpg"].startswith("not a readable image (UnidentifiedImageError")
    assert bad["gone.jpg"].startswith("not a readable image (FileNotFoundError")


def test_a_folder_is_usable_only_when_every_image_is(tmp_path):
    import cv2

    root = make_layout(tmp_path / "steel", HEADER_2020 + "a.jpg,1,1 3\n", ["a.jpg", "b.jpg", "c.jpg"])
    steel = np.full((256, 1600, 3), 90, np.uint8)
    cv2.imwrite(str(root / "train_images" / "a.jpg"), steel)
    cv2.imwrite(str(root / "train_images" / "b.jpg"), steel[:128])  # c.jpg stays an empty file
    with pytest.raises(data.BadImagesError, match=r"^2 of 3 images in .*train_images cannot be used \(b.jpg: 1600x128 "
                                                  r"pixels, expected 1600x256 .*; c.jpg: not a readable image") as caught:
        data.load_usable(root)
    assert list(caught.value.bad) == ["b.jpg", "c.jpg"] and caught.value.n_images == 3
    assert isinstance(caught.value, data.DataError)
    table, bad = data.load_usable(root, skip_bad_images=True)
    assert table["ImageId"].tolist() == ["a.jpg"] and list(table.index) == [0] and list(bad) == ["b.jpg", "c.jpg"]


def test_the_real_sample_reads_and_pivots(real_dir):
    rows = data.read_annotations(real_dir / "train.csv")
    assert len(rows) == 42 and rows["ClassId"].value_counts().sort_index().tolist() == [2, 1, 21, 18]
    table = data.load_table(real_dir)
    assert len(table) == 43 and int(table["has_defect"].sum()) == 33 and int((table["n_defects"] == 2).sum()) == 9
    assert data.class_labels(table).sum(axis=0).tolist() == [2, 1, 21, 18]
    assert data.check_images(real_dir / "train_images", table["ImageId"]) == {}
    for image_id, group in rows.groupby("ImageId"):
        row = table.set_index("ImageId").loc[image_id]
        for class_id, pixels in zip(group["ClassId"], group["EncodedPixels"], strict=True):
            assert row[f"Defect_{class_id}"] == pixels
