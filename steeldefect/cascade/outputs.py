"""What prediction writes: folders of images predicted in batches, Kaggle submission files, overlay pictures, and
the true masks of a table row to draw beside them.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import rle, runfiles
from ..config import CLASS_COLOURS, CLASS_IDS, DEFECT_COLUMNS
from .core import Cascade, CascadeResult, load_default, read_image

log = logging.getLogger(__name__)


def _submission_format(images_dir: Path) -> str:
    sample = images_dir.parent / "sample_submission.csv"
    if sample.is_file() and sample.read_text().startswith("ImageId_ClassId"):
        return "2019"
    return "2020"


def iter_predict(paths: Sequence[str | Path], cascade: Cascade | None = None, *, batch_size: int = 16
                 ) -> Iterator[tuple[Path, CascadeResult | None, str | None]]:
    """Predict image files in batches, yielding ``(path, result, None)`` per image, or ``(path, None, error)`` for
    a file that cannot be read (missing, not an image, a truncated JPEG): a bad file never stops the others."""
    cascade = cascade or load_default()
    paths = [Path(p) for p in paths]
    for start in range(0, len(paths), batch_size):
        readable = []
        for path in paths[start : start + batch_size]:
            try:
                readable.append((path, read_image(path)))
            except (OSError, ValueError) as err:
                log.warning("%s", err)
                yield path, None, str(err)
        results = cascade.predict_batch([pixels for _, pixels in readable])
        for (path, _), result in zip(readable, results, strict=True):
            yield path, result, None


# A Kaggle submission's columns, by release; _submission_row makes a row of them.
SUBMISSION_HEADERS = {"2020": ("ImageId", "EncodedPixels", "ClassId"), "2019": ("ImageId_ClassId", "EncodedPixels")}


def _check_submission_format(submission_format: str) -> str:
    if submission_format not in SUBMISSION_HEADERS:
        raise ValueError(f"submission_format must be '2019' or '2020', got {submission_format!r}")
    return submission_format


def _submission_row(submission_format: str, image_id: str, class_id: int, pixels: str) -> tuple:
    if submission_format == "2019":
        return f"{image_id}_{class_id}", pixels
    return image_id, pixels, class_id


def submission_frame(rows: Sequence[tuple[str, int, str]], submission_format: str = "2020") -> pd.DataFrame:
    """``(ImageId, ClassId, EncodedPixels)`` rows → a Kaggle submission: 2020 ``ImageId,EncodedPixels,ClassId`` or
    2019 ``ImageId_ClassId,EncodedPixels``."""
    _check_submission_format(submission_format)
    return pd.DataFrame([_submission_row(submission_format, *row) for row in rows],
                        columns=list(SUBMISSION_HEADERS[submission_format]))


def predict_dir(images_dir: str | Path, cascade: Cascade | None = None, *, submission_format: str | None = None,
                batch_size: int = 16) -> pd.DataFrame:
    """Predict every ``.jpg`` in a folder → a DataFrame in the Kaggle submission format, 4 rows per image.

    The format follows ``sample_submission.csv`` beside the folder when present (2019:
    ``ImageId_ClassId,EncodedPixels``), else 2020: ``ImageId,EncodedPixels,ClassId``. A file that cannot be read
    is reported (a logged warning) and left out; ``df.attrs["skipped"]`` maps its name to the reason.
    """
    images_dir = Path(images_dir)
    cascade = cascade or load_default()
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not paths:
        raise FileNotFoundError(f"{images_dir}: no .jpg images to predict")
    rows, skipped = [], {}
    with tqdm(total=len(paths), desc="predict", unit="img") as bar:
        for path, result, error in iter_predict(paths, cascade, batch_size=batch_size):
            if result is None:
                skipped[path.name] = error
            else:
                rows.extend((path.name, c, result.rles[c]) for c in CLASS_IDS)
            bar.update(1)
    df = submission_frame(rows, submission_format or _submission_format(images_dir))
    df.attrs["skipped"] = skipped
    return df


class SubmissionWriter:
    """A Kaggle submission written while its images are predicted, so that thousands of images cost no more memory
    than one and a killed run loses nothing done: each image's four rows are appended to ``<path>.partial`` and
    flushed, and ``close`` renames it to ``path``. Opening a writer on a path whose ``.partial`` exists continues it:
    ``done`` holds the images it has whole (a last image cut short is dropped and predicted again).

    Example:
        >>> with SubmissionWriter("submission.csv") as writer:
        ...     for path, result, _ in iter_predict([p for p in paths if p.name not in writer.done]):
        ...         writer.add(path.name, result.rles)
    """

    def __init__(self, path: str | Path, submission_format: str = "2020"):
        _check_submission_format(submission_format)
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.format = submission_format
        self.done: list[str] = []
        rows = self._rows_so_far() if self.partial.is_file() else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.partial, "w", newline="")  # rewritten with the whole images only  # noqa: SIM115
        self._writer = csv.writer(self._handle, lineterminator="\n")
        self._writer.writerow(SUBMISSION_HEADERS[submission_format])
        self._writer.writerows(rows)
        self._handle.flush()

    def _rows_so_far(self) -> list[list[str]]:
        """The rows of the whole images in the partial file (four a image, in class order)."""
        text = self.partial.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line cut short by a kill has no end yet: it does not count
        lines = list(csv.reader(io.StringIO(complete, newline="")))
        if not lines or tuple(lines[0]) != SUBMISSION_HEADERS[self.format]:
            raise ValueError(f"{self.partial} is not a {self.format} submission in progress (its header is "
                             f"{','.join(lines[0]) if lines else 'missing'}): delete it or write elsewhere")
        rows, kept = lines[1:], []
        for start in range(0, len(rows) - len(CLASS_IDS) + 1, len(CLASS_IDS)):
            group = rows[start : start + len(CLASS_IDS)]
            if any(len(row) != len(SUBMISSION_HEADERS[self.format]) for row in group):
                break
            names = {self._image_of(row) for row in group}
            if len(names) != 1 or [self._class_of(row) for row in group] != [str(c) for c in CLASS_IDS]:
                break
            kept.extend(group)
            self.done.append(names.pop())
        return kept

    def _image_of(self, row: list[str]) -> str:
        return row[0].rsplit("_", 1)[0] if self.format == "2019" else row[0]

    def _class_of(self, row: list[str]) -> str:
        return row[0].rsplit("_", 1)[-1] if self.format == "2019" else row[2]

    def add(self, image_id: str, rles: dict[int, str]) -> None:
        """An image's four rows (``CascadeResult.rles``), written and flushed."""
        self._writer.writerows(_submission_row(self.format, image_id, c, rles[c]) for c in CLASS_IDS)
        self._handle.flush()
        self.done.append(image_id)

    def close(self) -> Path:
        """Finish: the partial file becomes ``path`` (atomically)."""
        self._handle.close()
        os.replace(self.partial, self.path)
        return self.path

    def abandon(self) -> None:
        """Stop without finishing (an error, Ctrl-C): what was written stays in the partial file for the next run."""
        self._handle.close()

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self.abandon()


def write_submission(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return runfiles.write_text(path, df.to_csv(index=False))


def overlay(image, masks: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """An RGB uint8 picture: each class filled in its own colour and outlined."""
    picture = read_image(image).copy()
    masks = np.asarray(masks).astype(bool)
    if masks.shape != (*picture.shape[:2], len(CLASS_IDS)):
        raise ValueError(f"masks must be {(*picture.shape[:2], len(CLASS_IDS))} for this image, got {masks.shape}")
    for k, class_id in enumerate(CLASS_IDS):
        mask = masks[:, :, k]
        if not mask.any():
            continue
        colour = np.array(CLASS_COLOURS[class_id], np.float32)
        picture[mask] = ((1 - alpha) * picture[mask] + alpha * colour).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(picture, contours, -1, CLASS_COLOURS[class_id], 2)
    return picture




def overlay_figures(cascade: Cascade, rows: pd.DataFrame, images_dir: str | Path, figures: str | Path) -> list[Path]:
    """For each table row, ``figures/overlay_<image>.png``: the true masks above the cascade's prediction."""
    images_dir, figures = Path(images_dir), Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    written = []
    for _, row in rows.iterrows():
        path = images_dir / row["ImageId"]
        predicted, truth = overlay(path, cascade.predict(path).masks), overlay(path, true_masks(row))
        for panel, text in ((truth, "ground truth"), (predicted, "cascade prediction")):
            cv2.putText(panel, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
        written.append(figures / f"overlay_{Path(row['ImageId']).stem}.png")
        cv2.imwrite(str(written[-1]), cv2.cvtColor(cv2.vconcat([truth, predicted]), cv2.COLOR_RGB2BGR))
    return written


def true_masks(row: pd.Series) -> np.ndarray:
    """The (256, 1600, 4) bool masks of a table row."""
    return np.stack([rle.decode(row[col]).astype(bool) for col in DEFECT_COLUMNS], axis=-1)


