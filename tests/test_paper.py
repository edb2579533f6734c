from steeldefect import paper
from steeldefect.config import BACKBONES, TABLE_ROWS


def test_dataset_counts_are_consistent():
    assert sum(paper.IMAGES_BY_N_CLASSES.values()) == paper.N_IMAGES
    assert sum(paper.ROWS_PER_CLASS.values()) == paper.CSV_ROWS
    assert sum(k * n for k, n in paper.IMAGES_BY_N_CLASSES.items()) == paper.CSV_ROWS
    assert sum(paper.SPLIT_SIZES.values()) == paper.N_IMAGES


def test_tables_have_every_row_and_sane_values():
    assert tuple(paper.TABLES) == BACKBONES
    for table in paper.TABLES.values():
        assert tuple(table) == TABLE_ROWS
        for values in table.values():
            assert len(values) == 3 and all(0 < v < 1 for v in values)
    assert paper.TABLES["efficientnetb2"][("binary", "precision")][2] == 0.403072  # kept as printed
    assert paper.TABLES["efficientnetb0"][("class4", "dice_coef")] == (0.807605, 0.717663, 0.745110)


def test_table7_as_printed():
    assert paper.TABLE7[("binary", "recall")] == ((0.959294, 0.958249, 0.936440), "efficientnetb4")
    assert paper.TABLE7[("class4", "dice_loss")] == ((0.192395, 0.26306, 0.237202), "efficientnetb2")
    others = [row for row in TABLE_ROWS if row not in {("binary", "recall"), ("class4", "dice_loss")}]
    assert all(paper.TABLE7[row][1] == "efficientnetb0" for row in others)
    assert paper.AREA_THRESHOLDS[3] == (1100, 160000)
