"""The paper's published numbers, as data (Yulianto et al., Evergreen 10(4) 2023, doi 10.5109/7160923).

Transcribed as printed, oddities included (see ``NOTES``); never used in a code path that computes results,
only for tests and for side-by-side reports. Values of a table row are ``(train, validation, test)``.
"""

from __future__ import annotations

from .config import BACKBONES, TABLE_ROWS

# Section 3.1 and Figures 3-5.
CSV_ROWS = 7095
ROWS_PER_CLASS = {1: 897, 2: 247, 3: 5150, 4: 801}
N_IMAGES = 12568
IMAGES_BY_N_CLASSES = {0: 5902, 1: 6239, 2: 425, 3: 2}
# Section 4: test 10 %, then train 80 % / validation 20 % of the rest.
SPLIT_SIZES = {"train": 9048, "val": 2263, "test": 1257}
# Section 3.5: predicted masks outside [min, max] pixels (at 256x1600) are removed.
AREA_THRESHOLDS = {1: (500, 15500), 2: (700, 10000), 3: (1100, 160000), 4: (2800, 127000)}


def _table(values: list[tuple[float, float, float]]) -> dict[tuple[str, str], tuple[float, float, float]]:
    if len(values) != len(TABLE_ROWS):
        raise ValueError(f"a paper table needs {len(TABLE_ROWS)} rows, got {len(values)}")
    return dict(zip(TABLE_ROWS, values, strict=True))


# Tables 2-6, rows in TABLE_ROWS order: binary (bce, acc, f1, precision, recall), multi-label (same),
# then Defect-1..4 (dice_loss, dice_coef). The paper prints "dice_lost"; we name it dice_loss.
TABLES: dict[str, dict[tuple[str, str], tuple[float, float, float]]] = {
    "efficientnetb0": _table([  # Table 2
        (0.178447, 0.265499, 0.250437), (0.934240, 0.912506, 0.917263), (0.933116, 0.909538, 0.912092),
        (0.970758, 0.953391, 0.965039), (0.905879, 0.880826, 0.875233),
        (0.155322, 0.206799, 0.192802), (0.878725, 0.860000, 0.868066), (0.903832, 0.874959, 0.895421),
        (0.906790, 0.868914, 0.906721), (0.902535, 0.883114, 0.885870),
        (0.241853, 0.370989, 0.397452), (0.758147, 0.629011, 0.602548),
        (0.178259, 0.390348, 0.419159), (0.821741, 0.609652, 0.580841),
        (0.263068, 0.311629, 0.328843), (0.736931, 0.688371, 0.671156),
        (0.214004, 0.282338, 0.254890), (0.807605, 0.717663, 0.745110),
    ]),
    "efficientnetb1": _table([  # Table 3
        (0.788510, 0.907279, 0.801463), (0.785477, 0.763146, 0.785203), (0.756128, 0.735602, 0.742382),
        (0.887375, 0.876266, 0.894966), (0.679889, 0.651853, 0.653129),
        (0.240653, 0.264186, 0.252189), (0.834341, 0.820833, 0.826087), (0.840779, 0.824454, 0.837668),
        (0.837435, 0.817425, 0.843749), (0.846818, 0.833748, 0.834382),
        (0.373972, 0.396631, 0.402671), (0.626028, 0.603369, 0.597329),
        (0.360009, 0.539270, 0.453084), (0.639991, 0.460730, 0.546916),
        (0.308332, 0.331337, 0.338015), (0.691668, 0.668663, 0.661985),
        (0.273183, 0.295402, 0.317423), (0.726816, 0.704598, 0.682578),
    ]),
    "efficientnetb2": _table([  # Table 4
        (0.541636, 0.565283, 0.539540), (0.806919, 0.790102, 0.796340), (0.831168, 0.815828, 0.821966),
        (0.755907, 0.738654, 0.403072), (0.943803, 0.932571, 0.936905),
        (0.305657, 0.304111, 0.295493), (0.764951, 0.761667, 0.755622), (0.768916, 0.768373, 0.769678),
        (0.790763, 0.786341, 0.797085), (0.750545, 0.753532, 0.746478),
        (0.373497, 0.4147, 0.419832), (0.626502, 0.5853, 0.580168),
        (0.285572, 0.370037, 0.401043), (0.714428, 0.629963, 0.598957),
        (0.335688, 0.352584, 0.369652), (0.664313, 0.647416, 0.630348),
        (0.192395, 0.26306, 0.237202), (0.785996, 0.73694, 0.762798),
    ]),
    "efficientnetb3": _table([  # Table 5
        (0.332500, 0.348610, 0.351250), (0.840628, 0.836058, 0.824185), (0.820040, 0.818294, 0.789258),
        (0.947515, 0.935388, 0.932504), (0.736186, 0.742428, 0.698171),
        (0.251697, 0.274614, 0.251900), (0.813294, 0.810000, 0.802099), (0.845255, 0.832750, 0.840432),
        (0.845516, 0.825251, 0.847375), (0.847249, 0.841944, 0.835377),
        (0.368514, 0.415835, 0.428514), (0.631486, 0.584166, 0.571486),
        (0.269074, 0.404454, 0.745908), (0.730926, 0.595546, 0.596928),
        (0.340644, 0.357973, 0.380009), (0.659355, 0.642027, 0.619991),
        (0.283830, 0.283830, 0.246677), (0.716170, 0.716170, 0.753323),
    ]),
    "efficientnetb4": _table([  # Table 6
        (0.346099, 0.363001, 0.332109), (0.847922, 0.839152, 0.841687), (0.863654, 0.856155, 0.854614),
        (0.796479, 0.784471, 0.799043), (0.959294, 0.958249, 0.936440),
        (0.275177, 0.274807, 0.256699), (0.714107, 0.710833, 0.743628), (0.730746, 0.725928, 0.753428),
        (0.754317, 0.746032, 0.773512), (0.710991, 0.709270, 0.735849),
        (0.378674, 0.408794, 0.448929), (0.621326, 0.591206, 0.551071),
        (0.347912, 0.413195, 0.391237), (0.652088, 0.586805, 0.608763),
        (0.360699, 0.380269, 0.394802), (0.639301, 0.619731, 0.605198),
        (0.235969, 0.272217, 0.240393), (0.764031, 0.727783, 0.759607),
    ]),
}
assert tuple(TABLES) == BACKBONES

# Table 7 as printed: one backbone per row (the paper picks a backbone per metric, not per split).
_TABLE7_BACKBONE = {("binary", "recall"): "efficientnetb4", ("class4", "dice_loss"): "efficientnetb2"}
TABLE7: dict[tuple[str, str], tuple[tuple[float, float, float], str]] = {
    row: (TABLES[_TABLE7_BACKBONE.get(row, "efficientnetb0")][row], _TABLE7_BACKBONE.get(row, "efficientnetb0"))
    for row in TABLE_ROWS
}

NOTES: tuple[str, ...] = (
    "Table 4 (B2): binary test precision 0.403072 is far below its train/validation values (0.755907, "
    "0.738654) and inconsistent with the test F1 0.821966 and recall 0.936905; kept as printed.",
    "Table 2 (B0), Defect-4: train dice_loss 0.214004 + dice_coef 0.807605 != 1 (every other B0 pair sums to 1).",
    "Table 4 (B2), Defect-4: train dice_loss 0.192395 + dice_coef 0.785996 != 1.",
    "Table 5 (B3), Defect-2: test dice_loss 0.745908 + dice_coef 0.596928 != 1.",
    "Table 5 (B3), Defect-4: train and validation values are identical (0.283830 / 0.716170).",
    "Table 7 names one backbone per row, not the best per split: e.g. Defect-4 dice_coef is credited to B0 "
    "(validation 0.717663) although B2 (0.73694) and B4 (0.727783) are higher on validation and test.",
    "The paper prints 'dice_lost' for dice loss.",
)
