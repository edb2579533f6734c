"""What prediction writes: folders of images predicted in batches, Kaggle submission files, overlay pictures, and
the true masks of a table row to draw beside them.
"""

from __future__ import annotations

import logging
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


def submission_frame(rows: Sequence[tuple[str, int, str]], submission_format: str = "2020") -> pd.DataFrame:
    """``(ImageId, ClassId, EncodedPixels)`` rows → a Kaggle submission: 2020 ``ImageId,EncodedPixels,ClassId`` or
    2019 ``ImageId_ClassId,EncodedPixels``."""
    if submission_format == "2019":
        return pd.DataFrame({"ImageId_ClassId": [f"{n}_{c}" for n, c, _ in rows],
                             "EncodedPixels": [r for _, _, r in rows]})
    if submission_format != "2020":
        raise ValueError(f"submission_format must be '2019' or '2020', got {submission_format!r}")
    return pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])[["ImageId", "EncodedPixels", "ClassId"]]


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


