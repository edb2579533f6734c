"""From the Kaggle ``train.csv`` and ``train_images/`` to one row per image, a seeded split and statistics.

Reproduces the paper's Sections 3.1-3.2 and 4: the annotation file (Figure 2), the pivot to one row per image
with ``Defect_1..Defect_4`` (Figure 5, 12,568 rows on the real data), the stratified 10 % / 80 % / 20 % split and
the dataset statistics behind Figures 3, 4 and 9.
"""

from __future__ import annotations

import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from . import rle
from .config import CLASS_IDS, DEFECT_COLUMNS, IMAGE_SHAPE, SPLIT_SEED, STRATIFY_PRIORITY, TEST_SIZE, VAL_SIZE

log = logging.getLogger(__name__)

HEADER_2020: tuple[str, ...] = ("ImageId", "ClassId", "EncodedPixels")
HEADER_2019: tuple[str, ...] = ("ImageId_ClassId", "EncodedPixels")
IMAGE_SUFFIX = ".jpg"
_ID_CLASS_2019 = re.compile(r"(.+)_([^_]*)")


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the line."""


class BadImagesError(DataError):
    """Images of a folder that cannot be used; ``bad`` maps each ImageId to what is wrong with it."""

    def __init__(self, images_dir: Path, bad: dict[str, str], n_images: int):
        shown = "; ".join(f"{image_id}: {problem}" for image_id, problem in list(bad.items())[:3])
        super().__init__(f"{len(bad)} of {n_images} images in {images_dir} cannot be used ({shown}"
                         f"{'; ...' if len(bad) > 3 else ''})")
        self.images_dir, self.bad, self.n_images = images_dir, bad, n_images


@dataclass(frozen=True)
class SkippedRow:
    """A CSV row left out under ``on_error="skip"``, and why."""

    file: str
    line: int
    image_id: str
    reason: str


@dataclass(frozen=True)
class DatasetStats:
    """What Figures 3, 4 and 9 plot: rows per class, images by number of classes, per-class mask areas."""

    n_images: int
    rows_per_class: dict[int, int]
    images_by_n_classes: dict[int, int]
    areas: dict[int, np.ndarray] = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "n_images": self.n_images,
            "rows_per_class": self.rows_per_class,
            "images_by_n_classes": self.images_by_n_classes,
            "area_percentiles": {
                c: {p: float(np.percentile(a, p)) if a.size else None for p in (2, 50, 98)}
                for c, a in self.areas.items()
            },
        }


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _image_id_problem(image_id: str) -> str | None:
    if not image_id:
        return "ImageId is empty"
    if "/" in image_id or "\\" in image_id or ".." in image_id:
        return f"ImageId {image_id!r} must be a plain file name (no path separator, no '..')"
    return None


def _as_text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


class _Rows:
    """Collects rows and problems while reading, raising or skipping as asked."""

    def __init__(self, path: Path, on_error: str):
        self.path, self.on_error = path, on_error
        self.skipped: list[SkippedRow] = []

    def problem(self, line: int, image_id: str, reason: str) -> None:
        if self.on_error == "raise":
            raise DataError(f"{self.path}, line {line}: {reason}")
        self.skipped.append(SkippedRow(str(self.path), line, image_id, reason))


def _read_raw_csv(csv_path: Path) -> tuple[pd.DataFrame, bool]:
    """The annotation file as text columns, and whether it is the 2019 release's; errors name the file."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such annotation file (expected the Kaggle train.csv)")
    if not csv_path.read_text().strip():
        raise DataError(
            f"{csv_path}: the file is empty; expected a header {','.join(HEADER_2020)} (2020 release) or "
            f"{','.join(HEADER_2019)} (2019 release)"
        )
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: not a readable CSV ({err})") from err
    header = tuple(c.strip() for c in raw.columns)
    if header not in (HEADER_2020, HEADER_2019):
        raise DataError(
            f"{csv_path}: unknown header {','.join(header)}; expected {','.join(HEADER_2020)} (2020 release) "
            f"or {','.join(HEADER_2019)} (2019 release)"
        )
    return raw, header == HEADER_2019


def _read_csv(
    csv_path: Path, shape: tuple[int, int], on_error: str
) -> tuple[pd.DataFrame, dict[str, int], list[SkippedRow]]:
    """Defect rows (ImageId, ClassId, EncodedPixels, line), every image the file names (→ first line), skips."""
    _check_on_error(on_error)
    csv_path = Path(csv_path)
    raw, is_2019 = _read_raw_csv(csv_path)
    rows = _Rows(csv_path, on_error)
    records: list[tuple[str, int, str, int]] = []
    first_line: dict[tuple[str, int], int] = {}
    named: dict[str, int] = {}
    for line, values in enumerate(raw.itertuples(index=False, name=None), start=2):
        if is_2019:
            key, pixels = _as_text(values[0]), _as_text(values[1])
            match = _ID_CLASS_2019.fullmatch(key)
            if match is None:
                rows.problem(line, key, f"ImageId_ClassId {key!r} is not of the form '<ImageId>_<ClassId>'")
                continue
            image_id, class_text = match.groups()
        else:
            image_id, class_text, pixels = (_as_text(v) for v in values)
        if (reason := _image_id_problem(image_id)) is not None:
            rows.problem(line, image_id, reason)
            continue
        if class_text not in {str(c) for c in CLASS_IDS}:
            rows.problem(line, image_id, f"ClassId {class_text!r} is not one of {', '.join(map(str, CLASS_IDS))}")
            continue
        class_id = int(class_text)
        if (image_id, class_id) in first_line:
            rows.problem(
                line, image_id,
                f"duplicate row for image {image_id} class {class_id} (first at line {first_line[image_id, class_id]})",
            )
            continue
        if not pixels and not is_2019:
            rows.problem(line, image_id, "EncodedPixels is empty; the 2020 release lists defect rows only")
            continue
        try:
            rle.validate(pixels, shape)
        except rle.RLEError as err:
            rows.problem(line, image_id, f"invalid EncodedPixels for class {class_id}: {err}")
            continue
        first_line[image_id, class_id] = line
        named.setdefault(image_id, line)
        if pixels:
            records.append((image_id, class_id, pixels, line))
    defects = pd.DataFrame(records, columns=[*HEADER_2020, "line"])
    defects["ClassId"] = defects["ClassId"].astype(int)
    return defects, named, rows.skipped


def read_annotations(
    csv_path: str | Path, *, shape: tuple[int, int] = IMAGE_SHAPE, on_error: str = "raise"
) -> pd.DataFrame | tuple[pd.DataFrame, list[SkippedRow]]:
    """Read a Kaggle ``train.csv`` of either release into its defect rows.

    The format is detected from the header: 2020 ``ImageId,ClassId,EncodedPixels`` (defect rows only) or 2019
    ``ImageId_ClassId,EncodedPixels`` (4 rows per image, empty for absent classes). Every RLE is validated.

    Args:
        csv_path: the annotation file.
        shape: ``(height, width)`` the RLEs refer to.
        on_error: ``"raise"`` (default) stops at the first bad row with a ``DataError`` naming file and line;
            ``"skip"`` leaves bad rows out and returns them too.

    Returns:
        A DataFrame ``ImageId, ClassId, EncodedPixels, line`` (``line`` is the row's line in the file), one row
        per defect; with ``on_error="skip"``, the tuple ``(rows, skipped)``.
    """
    defects, _, skipped = _read_csv(Path(csv_path), shape, on_error)
    if skipped:
        log.warning("%s: skipped %d bad rows", csv_path, len(skipped))
    return (defects, skipped) if on_error == "skip" else defects


def list_images(images_dir: str | Path) -> list[str]:
    """The ``*.jpg`` file names of an image folder, sorted."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: no such image folder")
    return sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() == IMAGE_SUFFIX and p.is_file())


def load_table(
    data_dir: str | Path, *, shape: tuple[int, int] = IMAGE_SHAPE, on_error: str = "raise"
) -> pd.DataFrame | tuple[pd.DataFrame, list[SkippedRow]]:
    """One row per image of ``train_images/``: the paper's pivot (Figure 5).

    Args:
        data_dir: a folder in the Kaggle layout (``train.csv``, ``train_images/*.jpg``).
        shape: ``(height, width)`` of the images, which the RLEs refer to.
        on_error: ``"raise"`` or ``"skip"`` (see ``read_annotations``); a row whose image is not in
            ``train_images/`` is an error too.

    Returns:
        A DataFrame sorted by ``ImageId`` with ``Defect_1..Defect_4`` (RLE, ``''`` when absent), ``has_defect``
        (bool) and ``n_defects`` (int); images without rows are defect-free. With ``on_error="skip"``, the tuple
        ``(table, skipped)``.

    Example:
        >>> table = load_table("data/synthetic")
        >>> table[["ImageId", "has_defect"]].head(2)
    """
    data_dir = Path(data_dir)
    csv_path = data_dir / "train.csv"
    images_dir = data_dir / "train_images"
    if not csv_path.is_file() or not images_dir.is_dir():
        raise FileNotFoundError(
            f"{data_dir}: expected the Kaggle layout, train.csv and train_images/ (see data/README.md); "
            f"missing {csv_path.name if not csv_path.is_file() else images_dir.name + '/'}"
        )
    defects, named, skipped = _read_csv(csv_path, shape, on_error)
    image_ids = list_images(images_dir)
    if not image_ids:
        raise DataError(f"{images_dir}: no {IMAGE_SUFFIX} images")
    present = set(image_ids)
    rows = _Rows(csv_path, on_error)
    for image_id, line in named.items():
        if image_id not in present:
            rows.problem(line, image_id, f"image {image_id} is not in {images_dir}")
    skipped += rows.skipped
    missing = {s.image_id for s in rows.skipped}
    defects = defects[~defects["ImageId"].isin(missing)]
    if skipped:
        log.warning("%s: skipped %d bad rows", csv_path, len(skipped))

    table = pd.DataFrame({"ImageId": image_ids})
    wide = defects.pivot(index="ImageId", columns="ClassId", values="EncodedPixels")
    for class_id, column in zip(CLASS_IDS, DEFECT_COLUMNS, strict=True):
        lookup = wide[class_id].dropna().to_dict() if class_id in wide.columns else {}
        table[column] = [lookup.get(image_id, "") for image_id in image_ids]
    present_classes = table[list(DEFECT_COLUMNS)] != ""
    table["n_defects"] = present_classes.sum(axis=1).astype(int)
    table["has_defect"] = table["n_defects"] > 0
    return (table, skipped) if on_error == "skip" else table


def _image_problem(path: Path, shape: tuple[int, int]) -> str | None:
    """What is wrong with one image file for training, or None: unreadable, not a JPEG that decodes to its end,
    or not ``shape`` (the masks' size)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
        encoded = np.fromfile(path, np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        return f"not a readable image ({type(err).__name__}: {err})"
    if kind != "JPEG":
        return f"a {kind} image, expected a JPEG"
    # An eighth-size decode reads the whole entropy-coded stream (a truncated or corrupt file fails) at a quarter
    # of a full decode's cost.
    if cv2.imdecode(encoded, cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
        return "a JPEG that does not decode (corrupt or truncated)"
    if (height, width) != tuple(shape):
        return f"{width}x{height} pixels, expected {shape[1]}x{shape[0]} (the size the masks in train.csv refer to)"
    return None


def check_images(images_dir: str | Path, image_ids, *, shape: tuple[int, int] = IMAGE_SHAPE,
                 workers: int = 4) -> dict[str, str]:
    """``{image_id: what is wrong}`` for the images that training could not use: a file that is missing, does not
    decode to its end (e.g. truncated) or is not ``shape``. Checked before any training, so that a bad file is
    named up front instead of ending a run inside ``fit`` with TensorFlow's ``jpeg::Uncompress failed``.

    Example:
        >>> check_images("data/synthetic-48/train_images", table["ImageId"])
        {}
    """
    images_dir = Path(images_dir)
    image_ids = list(image_ids)
    with ThreadPoolExecutor(workers) as pool:  # OpenCV releases the GIL while it decodes
        problems = pool.map(lambda image_id: _image_problem(images_dir / image_id, shape), image_ids)
        return {image_id: problem for image_id, problem in zip(image_ids, problems, strict=True) if problem}


def load_usable(data_dir: str | Path, *, skip_bad_images: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """A Kaggle-layout folder's table (``load_table``) after every image was checked (``check_images``), and the bad
    images ``{ImageId: problem}``: a bad image raises ``BadImagesError`` naming it, unless ``skip_bad_images``
    leaves it out of the table.

    Example:
        >>> table, bad = load_usable("../shared/real")
    """
    table = load_table(data_dir)
    images_dir = Path(data_dir) / "train_images"
    bad = check_images(images_dir, table["ImageId"])
    if bad and not skip_bad_images:
        raise BadImagesError(images_dir, bad, len(table))
    if bad:
        table = table[~table["ImageId"].isin(list(bad))].reset_index(drop=True)
    return table, bad


def class_labels(table: pd.DataFrame) -> np.ndarray:
    """``(n_images, 4)`` uint8: 1 where the image has class ``c`` (channel ``c - 1``)."""
    return (table[list(DEFECT_COLUMNS)] != "").to_numpy(np.uint8)


def stratify_labels(table: pd.DataFrame) -> np.ndarray:
    """The source pipeline's stratum: the first class present in the order 2 > 4 > 1 > 3, else 0."""
    labels = class_labels(table)
    strata = np.zeros(len(table), np.int64)
    for class_id in reversed(STRATIFY_PRIORITY):  # the highest priority is written last and wins
        strata[labels[:, class_id - 1] == 1] = class_id
    return strata


def _feasible_strata(strata: np.ndarray, n_test: int) -> np.ndarray:
    """Merge the smallest strata into the largest until a stratified split of ``n_test`` is possible.

    A real dataset is never changed; tiny ones (tests, the smoke twin) would otherwise make sklearn refuse.
    """
    strata = strata.copy()
    n_train = strata.size - n_test
    while True:
        values, counts = np.unique(strata, return_counts=True)
        if values.size <= 1 or (counts.min() >= 2 and values.size <= min(n_test, n_train)):
            return strata
        smallest, largest = values[counts.argmin()], values[counts.argmax()]
        log.info("stratified split: stratum %d (%d images) merged into %d", smallest, counts.min(), largest)
        strata[strata == smallest] = largest


def _split(ids: np.ndarray, strata: np.ndarray, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_held = math.ceil(size * ids.size)  # sklearn's rounding for a float test_size
    strata = _feasible_strata(strata, n_held)
    stratify = strata if np.unique(strata).size > 1 else None
    return train_test_split(ids, test_size=size, random_state=seed, stratify=stratify)


def split_table(
    table: pd.DataFrame, test_size: float = TEST_SIZE, val_size: float = VAL_SIZE, seed: int = SPLIT_SEED, *,
    keep_every_class: bool = True,
) -> pd.DataFrame:
    """Add ``split`` ∈ {train, val, test}: test first, then validation from the rest, stratified and seeded.

    Reproduces the paper's Section 4 (12,568 images → 9,048 / 2,263 / 1,257) with the source pipeline's
    stratum (``stratify_labels``) and ``random_state``. The same table and seed give the same split. With
    ``keep_every_class`` a class the split left without a training image gets one (``keep_classes_in_train``).
    """
    if len(table) < 3:
        raise DataError(f"a train/validation/test split needs at least 3 images, got {len(table)}")
    table = table.reset_index(drop=True)
    strata = stratify_labels(table)
    index = np.arange(len(table))
    rest, test = _split(index, strata, test_size, seed)
    train, val = _split(rest, strata[rest], val_size, seed)
    split = np.empty(len(table), object)
    split[train], split[val], split[test] = "train", "val", "test"
    table = table.assign(split=split)
    return keep_classes_in_train(table)[0] if keep_every_class else table


def keep_classes_in_train(table: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Move one image into ``train`` for each class that has images but none in ``train`` (validation first,
    then test), so that every class present can be learned. On the Kaggle data no class is ever short of training
    images and nothing moves; a small folder (a subset, a plant's own images) needs it.

    Returns:
        The table and the moves, ``[{"ImageId", "class_id", "from"}]``.
    """
    labels = class_labels(table)
    split = table["split"].to_numpy(object).copy()
    moved = []
    for k, class_id in enumerate(CLASS_IDS):
        has = labels[:, k] == 1
        if not has.any() or (has & (split == "train")).any():
            continue
        for source in ("val", "test"):
            found = np.flatnonzero(has & (split == source))
            if found.size:
                split[found[0]] = "train"
                moved.append({"ImageId": table["ImageId"].iloc[found[0]], "class_id": class_id, "from": source})
                log.warning("split: class %d had no training image; moved %s from %s to train", class_id,
                            moved[-1]["ImageId"], source)
                break
    return table.assign(split=split), moved


def examples(table: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """Up to ``n`` defective images that show every class early: the first image of each class, then the rest."""
    defective = table[table["has_defect"]]
    firsts = [defective.index[defective[col] != ""][0] for col in DEFECT_COLUMNS if (defective[col] != "").any()]
    order = list(dict.fromkeys(firsts + list(defective.index)))
    return defective.loc[order[:n]]


def with_split(table: pd.DataFrame, splits_path: str | Path) -> pd.DataFrame:
    """``table`` with the ``split`` column of a run's ``splits.csv`` (``ImageId,split``); every image must be in it."""
    splits_path = Path(splits_path)
    try:
        splits = pd.read_csv(splits_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{splits_path} is damaged ({str(err).strip().splitlines()[0]}): delete it to have the "
                        "split made again from its seed, or start the run over with --fresh") from None
    if list(splits.columns) != ["ImageId", "split"]:
        raise DataError(f"{splits_path}: expected the columns ImageId,split, got {','.join(splits.columns)}")
    merged = table.merge(splits, on="ImageId", how="left", validate="one_to_one")
    missing = merged.loc[merged["split"].isna(), "ImageId"]
    if len(missing):
        raise DataError(f"{splits_path}: {len(missing)} image(s) of the table have no split, e.g. {missing.iloc[0]}")
    return merged


def dataset_stats(table: pd.DataFrame, shape: tuple[int, int] = IMAGE_SHAPE) -> DatasetStats:
    """Rows per class (Figure 3), images by number of classes (Figure 4) and mask areas per class (Figure 9)."""
    labels = class_labels(table)
    n_classes = labels.sum(axis=1)
    areas = {
        c: np.array([rle.area(r, shape) for r in table[col] if r], dtype=np.int64)
        for c, col in zip(CLASS_IDS, DEFECT_COLUMNS, strict=True)
    }
    return DatasetStats(
        n_images=len(table),
        rows_per_class={c: int(labels[:, c - 1].sum()) for c in CLASS_IDS},
        images_by_n_classes={k: int((n_classes == k).sum()) for k in range(len(CLASS_IDS) + 1)},
        areas=areas,
    )
