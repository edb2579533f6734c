"""How steel looks, in numbers: statistics of a Kaggle-layout folder, measured the same way on real images and on
the synthetic twin, and a table that puts them side by side (the real-steel issue, DESIGN.md "Real data and the
twin").

``measure(data_dir)`` reads a folder's images and masks and returns summary statistics only (no pixels):
grey-level percentiles and spread per image, unlit strips at the sides, the direction and spectral slope of the
texture, and per defect class the contrast against the surrounding steel, the connected components per mask and
their elongation and orientation. ``REAL`` holds those numbers measured once on the real sample (43 competition
images, ``../shared/real``); ``compare(twin_dir)`` measures a folder and sets it against them with the targets a
twin should meet.

Example:
    >>> from steeldefect import realism
    >>> table = realism.compare("data/synthetic-1200")  # the twin against the stored real numbers
    >>> table[["statistic", "real", "twin", "within target"]]
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import data, rle
from .config import CLASS_COLOURS, CLASS_IDS, DEFECT_COLUMNS

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
UNLIT_LEVEL = 20  # a column whose mean grey level is below this is unlit (the black strips at the sides)
UNLIT_MIN_WIDTH = 32  # columns: narrower dark edges are not counted as a strip
RING = 15  # px: the steel around a defect that its contrast is measured against
MODEL_SIZE = (64, 320)  # the default profile's input: where a defect's texture is compared with its ring's
REAL_FILE = "realism_real.json"  # in the package: REAL, measured on the real sample (numbers only)


def _grey(path: Path) -> np.ndarray:
    pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError(f"{path}: not a readable image")
    return pixels


def _strips(grey: np.ndarray) -> tuple[int, int]:
    """Widths of the unlit strips at the left and right edges (0 where narrower than ``UNLIT_MIN_WIDTH``)."""
    dark = grey.mean(axis=0) < UNLIT_LEVEL

    def leading(flags: np.ndarray) -> int:
        lit = np.flatnonzero(~flags)
        width = int(flags.size if lit.size == 0 else lit[0])
        return width if width >= UNLIT_MIN_WIDTH else 0

    return leading(dark), leading(dark[::-1])


def unlit_strip(grey: np.ndarray) -> int:
    """Width in columns of the wider unlit strip at the image's sides (0: none)."""
    return max(_strips(grey))


def texture(grey: np.ndarray) -> dict[str, float]:
    """The texture of the lit steel: which way its streaks run and how fast its power falls with frequency.

    ``streak_ratio``: variance of the column means over variance of the row means (> 1: vertical streaks, the
    grey level changes from column to column; < 1: horizontal stripes). ``spectral_slope``: the slope of log power
    against log frequency of the rows' spectrum (mean over rows), from 1/64 to 1/4 cycles per pixel.
    """
    left, right = _strips(grey)
    lit = grey[:, left : grey.shape[1] - right].astype(np.float64)
    if lit.shape[1] < 64:
        return {"streak_ratio": float("nan"), "spectral_slope": float("nan")}
    ratio = lit.mean(axis=0).var() / max(lit.mean(axis=1).var(), 1e-9)
    rows = lit - lit.mean(axis=1, keepdims=True)
    power = (np.abs(np.fft.rfft(rows, axis=1)) ** 2).mean(axis=0)
    freqs = np.fft.rfftfreq(rows.shape[1])
    band = (freqs >= 1 / 64) & (freqs <= 1 / 4)
    slope = np.polyfit(np.log(freqs[band]), np.log(power[band] + 1e-12), 1)[0]
    return {"streak_ratio": float(ratio), "spectral_slope": float(slope)}


def surroundings(mask: np.ndarray) -> np.ndarray:
    """The steel around a defect that its contrast is measured against: the ``RING``-pixel band outside ``mask``."""
    mask = mask.astype(np.uint8)
    return cv2.dilate(mask, np.ones((2 * RING + 1, 2 * RING + 1), np.uint8)).astype(bool) & ~mask.astype(bool)


def texture_ratio(grey: np.ndarray, inside: np.ndarray, around: np.ndarray, size=MODEL_SIZE) -> float:
    """How much a defect stands out by its texture where a model looks: the standard deviation of the grey levels
    inside it over that of the steel around it, both at ``size`` (area-averaged, as the loaders resize); NaN when
    either has fewer than 3 pixels there."""
    def shrink(image):
        return cv2.resize(image.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)

    small, inside, around = shrink(grey), shrink(inside) > 0.5, shrink(around) > 0.5
    if inside.sum() < 3 or around.sum() < 3:
        return float("nan")
    return float(small[inside].std() / max(float(small[around].std()), 1e-6))


def defect_shape(grey: np.ndarray, mask: np.ndarray) -> dict[str, float] | None:
    """A defect's contrast (mean grey inside minus the ring of steel around it), its texture against the ring's at
    the models' input size (``texture_ratio``), its connected components, and their median elongation (major /
    minor axis) and orientation (|angle| of the major axis from horizontal, 0-90°)."""
    mask = mask.astype(np.uint8)
    if not mask.any():
        return None
    ring = surroundings(mask)
    lit = grey >= UNLIT_LEVEL
    inside, around = grey[mask.astype(bool) & lit], grey[ring & lit]
    contrast = float(inside.mean() - around.mean()) if inside.size and around.size else float("nan")
    ratio = texture_ratio(grey, mask.astype(bool) & lit, ring & lit)
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    elongations, orientations = [], []
    for label in range(1, count):
        ys, xs = np.nonzero(labels == label)
        if xs.size < 5:
            continue
        cov = np.cov(np.stack([xs, ys]).astype(np.float64))
        values, vectors = np.linalg.eigh(cov)
        elongations.append(float(np.sqrt(values[1] / max(values[0], 1e-6))))
        major = vectors[:, 1]
        orientations.append(float(np.degrees(np.arctan2(abs(major[1]), abs(major[0])))))
    return {"contrast": contrast, "texture_ratio": ratio, "components": float(count - 1),
            "elongation": float(np.median(elongations)) if elongations else float("nan"),
            "orientation": float(np.median(orientations)) if orientations else float("nan")}


def measure(data_dir: str | Path, max_images: int | None = None) -> dict:
    """Summary statistics of a Kaggle-layout folder (``train.csv`` and ``train_images/``): medians over images.

    Args:
        data_dir: the folder, real or twin.
        max_images: measure the first N images (sorted by name) only.

    Returns:
        ``{"n_images", "percentiles": {p: grey}, "std", "unlit_share", "unlit_width", "streak_ratio",
        "spectral_slope", "classes": {class_id: {"n_masks", "contrast", "abs_contrast", "texture_ratio",
        "components", "elongation", "orientation"}}}``: numbers only.
    """
    data_dir = Path(data_dir)
    table = data.load_table(data_dir)
    if max_images is not None:
        table = table.head(max_images)
    per_image, per_class = [], {c: [] for c in CLASS_IDS}
    for _, row in table.iterrows():
        grey = _grey(data_dir / "train_images" / row["ImageId"])
        found = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(grey, PERCENTILES), strict=True)}
        found.update({"std": float(grey.std()), "unlit_width": unlit_strip(grey), **texture(grey)})
        per_image.append(found)
        for class_id, column in zip(CLASS_IDS, DEFECT_COLUMNS, strict=True):
            if row[column]:
                shape = defect_shape(grey, rle.decode(row[column], grey.shape))
                if shape:
                    per_class[class_id].append(shape)
    images = pd.DataFrame(per_image)
    strips = images["unlit_width"][images["unlit_width"] > 0]

    def median(values) -> float | None:
        values = pd.Series(values, dtype=float).dropna()
        return float(values.median()) if len(values) else None

    classes = {}
    for class_id, shapes in per_class.items():
        frame = pd.DataFrame(shapes)
        classes[str(class_id)] = {"n_masks": len(shapes)} if frame.empty else {
            "n_masks": len(shapes), "contrast": median(frame["contrast"]),
            "abs_contrast": median(frame["contrast"].abs()), "texture_ratio": median(frame["texture_ratio"]),
            "components": median(frame["components"]),
            "elongation": median(frame["elongation"]), "orientation": median(frame["orientation"])}
    return {
        "n_images": len(images),
        "percentiles": {str(p): median(images[f"p{p}"]) for p in PERCENTILES},
        "std": median(images["std"]),
        "unlit_share": float((images["unlit_width"] > 0).mean()),
        "unlit_width": median(strips),
        "streak_ratio": median(images["streak_ratio"]),
        "spectral_slope": median(images["spectral_slope"]),
        "classes": classes,
    }


def load_real() -> dict:
    """The statistics of the real sample stored in the package (measured with ``measure``; no pixels)."""
    return json.loads(resources.files(__package__).joinpath(REAL_FILE).read_text())


def compare(twin: str | Path | dict, real: str | Path | dict | None = None, max_images: int | None = None
            ) -> pd.DataFrame:
    """Each statistic of a twin (a folder, or ``measure``'s result) beside real steel's (the stored numbers by
    default, or a folder), with the difference and the target a faithful twin meets.

    Targets: grey-level percentiles within ±12, standard deviation within ±15 %, the share of images with an unlit
    strip within ±10 points, the streaks' direction the same, per class the contrast and the components per mask
    within ±30 %. Statistics without a target are shown for information.
    """
    twin_stats = twin if isinstance(twin, dict) else measure(twin, max_images)
    real_stats = load_real()["stats"] if real is None else real if isinstance(real, dict) else measure(real, max_images)
    rows = []

    def add(name, real_value, twin_value, rule: str | None, ok):
        rows.append({"statistic": name, "real": real_value, "twin": twin_value,
                     "difference": None if real_value is None or twin_value is None else twin_value - real_value,
                     "target": rule or "", "within target": None if rule is None else bool(ok)})

    for p in PERCENTILES:
        r, t = real_stats["percentiles"][str(p)], twin_stats["percentiles"][str(p)]
        add(f"grey level, percentile {p}", r, t, "±12", abs(t - r) <= 12)
    r, t = real_stats["std"], twin_stats["std"]
    add("grey level, standard deviation", r, t, "±15 %", abs(t - r) <= 0.15 * r)
    r, t = real_stats["unlit_share"], twin_stats["unlit_share"]
    add("share of images with an unlit strip", r, t, "±0.10", abs(t - r) <= 0.10)
    add("unlit strip width (px)", real_stats["unlit_width"], twin_stats["unlit_width"], None, None)
    r, t = real_stats["streak_ratio"], twin_stats["streak_ratio"]
    add("streaks: column / row variance (>1 vertical)", r, t, "same side of 1",
        r is not None and t is not None and (r > 1) == (t > 1))
    add("texture: spectral slope along rows", real_stats["spectral_slope"], twin_stats["spectral_slope"], None, None)
    for c in CLASS_IDS:
        real_class, twin_class = real_stats["classes"][str(c)], twin_stats["classes"][str(c)]
        for key, label, rule in (("abs_contrast", "|contrast| (grey levels)", "±30 %"),
                                 ("contrast", "signed contrast (grey levels)", None),
                                 ("texture_ratio", "texture / the ring's at 64x320 (std ratio)", None),
                                 ("components", "components per mask", "±30 %"),
                                 ("elongation", "elongation", None), ("orientation", "orientation (°)", None)):
            r, t = real_class.get(key), twin_class.get(key)
            ok = r is not None and t is not None and abs(t - r) <= 0.3 * abs(r)
            add(f"class {c}: {label}", r, t, rule if r is not None else None, ok)
    return pd.DataFrame(rows)


def fig_compare(table: pd.DataFrame):
    """Real against twin: the grey-level percentiles as two curves, every other statistic as paired bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    grey = table[table["statistic"].str.startswith("grey level, percentile ")]
    for column, style in (("real", "o-"), ("twin", "s--")):
        left.plot(PERCENTILES, grey[column].astype(float), style, label=column)
    left.set(xlabel="percentile", ylabel="grey level", title="Grey levels (median over images)")
    left.legend()
    rest = table[~table.index.isin(grey.index) & table["real"].notna() & table["twin"].notna()]
    scale = rest["real"].abs().replace(0, 1).astype(float)
    positions = np.arange(len(rest))
    right.barh(positions - 0.2, rest["real"].astype(float) / scale, height=0.4, label="real")
    right.barh(positions + 0.2, rest["twin"].astype(float) / scale, height=0.4, label="twin")
    right.set_yticks(positions, rest["statistic"], fontsize=7)
    right.invert_yaxis()
    right.axvline(1, color="grey", lw=0.5)
    right.set(title="Other statistics (each relative to real)", xlabel="value / real value")
    right.legend()
    fig.tight_layout()
    return fig


def _outlined(path: Path, row: pd.Series) -> np.ndarray:
    """An image (RGB) with each class's mask outlined in its colour."""
    picture = cv2.cvtColor(_grey(path), cv2.COLOR_GRAY2RGB)
    for c, column in zip(CLASS_IDS, DEFECT_COLUMNS, strict=True):
        if row[column]:
            contours, _ = cv2.findContours(rle.decode(row[column]).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(picture, contours, -1, CLASS_COLOURS[c], 3)
    return picture


def fig_beside_real(folder: str | Path, real: str | Path | None = None, n: int = 4, seed: int = 0):
    """``n`` images of ``folder`` (defect-free and defective alike, masks outlined) beside ``n`` of real steel, the
    way the twin is meant to be judged: by eye, then by transfer. ``real``: a Kaggle-layout folder of real images;
    None draws ``folder`` alone (the package holds no real pixels)."""
    from matplotlib.figure import Figure

    columns = [("this folder", Path(folder))] + ([("real steel", Path(real))] if real is not None else [])
    fig = Figure(figsize=(8 * len(columns), 1.4 * n))
    axes = np.asarray(fig.subplots(n, len(columns), squeeze=False))
    for k, (title, root) in enumerate(columns):
        table = data.load_table(root)
        rng = np.random.default_rng(seed)
        clean, defective = table[~table["has_defect"]], table[table["has_defect"]]
        picks = pd.concat([clean.iloc[rng.permutation(len(clean))[: n // 2]],
                           defective.iloc[rng.permutation(len(defective))[: n - min(n // 2, len(clean))]]])
        for i, (_, row) in enumerate(picks.iterrows()):
            classes = [c for c, col in zip(CLASS_IDS, DEFECT_COLUMNS, strict=True) if row[col]]
            axes[i, k].imshow(_outlined(root / "train_images" / row["ImageId"], row))
            axes[i, k].set_title(f"{title}: {', '.join(f'class {c}' for c in classes) or 'defect-free'}", fontsize=8)
        for ax in axes[:, k]:
            ax.axis("off")
    fig.tight_layout()
    return fig
