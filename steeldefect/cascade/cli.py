"""``python -m steeldefect.cascade``: predict images or folders (a submission, overlays), ``export`` a cascade for
deployment, or ``--evaluate`` it on a Kaggle-layout folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

import cv2
from tqdm import tqdm

from .. import data, runfiles
from ..config import CLASS_IDS, TTA_CHOICES, tta_from_choice
from .core import Cascade, default_cascade_path
from .evaluation import evaluate_folder
from .export import EXPORT_FORMATS, METADATA_FILE, SERVING_SIGNATURE, TFLITE_PRECISIONS
from .outputs import SubmissionWriter, iter_predict, overlay


def main(argv: list[str] | None = None) -> int:
    """``python -m steeldefect.cascade --run RUN_DIR IMAGE_OR_DIR... [--submission out.csv] [--overlays DIR]``.

    An image that cannot be read is reported and the others predicted; the exit code is then 1 (2: no cascade).
    ``python -m steeldefect.cascade export [--run RUN_DIR] OUT_DIR [--format savedmodel|tflite]`` exports it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        return _export_command(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m steeldefect.cascade",
                                     description="Predict steel defects with a trained cascade.")
    parser.add_argument("--run", type=Path, default=None,
                        help="run directory or bundle with cascade.json (default: $STEELDEFECT_CASCADE or the latest run)")
    parser.add_argument("inputs", nargs="*", type=Path, help="images or folders of .jpg images")
    parser.add_argument("--evaluate", type=Path, metavar="DATA_DIR",
                        help="instead of predicting, score the cascade on every image of a Kaggle-layout folder "
                             "(train.csv, train_images/): stage 1's ROC AUC and accuracy, stage 2's accuracy, the "
                             "Kaggle mean Dice against predicting every mask empty")
    parser.add_argument("--json", type=Path, help="with --evaluate: write the whole evaluation here")
    parser.add_argument("--submission", type=Path, help="write a Kaggle submission CSV here")
    parser.add_argument("--overlays", type=Path, help="write an overlay PNG per image into this folder")
    parser.add_argument("--searched", action="store_true", help="use the thresholds searched on validation")
    parser.add_argument("--tta", choices=TTA_CHOICES,
                        help="test-time augmentation: average each stage over the image's left-right mirror "
                             "(hflip) or all four flips (hvflip); default: the cascade's own (none unless saved so)")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cascade = _cli_cascade(args)
    except (runfiles.RunFileError, FileNotFoundError) as err:  # CascadeError is a RunFileError
        if args.verbose:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.evaluate is not None:
        return _evaluate_command(cascade, args.evaluate, args.json)
    if not args.inputs:
        parser.error("give images or folders to predict, or --evaluate DATA_DIR")
    paths = _image_paths(args.inputs)
    if paths is None:
        return 2
    if args.overlays:
        args.overlays.mkdir(parents=True, exist_ok=True)
    # The submission is written as the images are predicted (SubmissionWriter): memory stays flat over thousands of
    # images, and the same command after a kill continues where it stopped.
    writer = SubmissionWriter(args.submission) if args.submission else None
    todo = paths
    if writer is not None and writer.done:
        done = set(writer.done)
        todo = [p for p in paths if p.name not in done]
        print(f"submission: continuing {writer.partial}: {len(paths) - len(todo)} of {len(paths)} images are in it, "
              f"{len(todo)} to predict")
    failed = []
    try:
        for path, result, error in tqdm(iter_predict(todo, cascade), total=len(todo), desc="predict", unit="img",
                                        disable=len(todo) < 2):
            if result is None:
                print(f"error: {error}", file=sys.stderr)
                failed.append(path.name)
                continue
            kept = ", ".join(f"class {c} ({result.areas[c]} px)" for c in result.classes) or "no defect"
            print(f"{path.name}: defect p={result.defect_prob:.2f}; {kept}")
            if writer is not None:
                writer.add(path.name, result.rles)
            if args.overlays:
                picture = overlay(path, result.masks)
                cv2.imwrite(str(args.overlays / f"{path.stem}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    except BaseException:
        if writer is not None:
            writer.abandon()
            print(f"submission: stopped; {len(writer.done)} images are in {writer.partial}: the same command "
                  "continues it", file=sys.stderr)
        raise
    if writer is not None:
        written = writer.close()
        print(f"submission: {written} ({len(writer.done) * len(CLASS_IDS)} rows, {len(writer.done)} images)")
    if failed:
        print(f"error: {len(failed)} of {len(paths)} images could not be read and were not predicted: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _image_paths(inputs: list[Path]) -> list[Path] | None:
    """The images the command line names: files as given, folders' ``.jpg`` files sorted; None (said on stderr)
    when one of them does not exist."""
    paths = []
    for item in inputs:
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() == ".jpg"))
        elif item.is_file():
            paths.append(item)
        else:
            print(f"error: {item}: no such file or folder", file=sys.stderr)
            return None
    return paths


def _cli_cascade(args) -> Cascade:
    """The cascade a command line names: ``--run`` (or the default), ``--searched`` and ``--tta``."""
    tta = {} if args.tta is None else {"tta": tta_from_choice(args.tta)}
    return Cascade.load(args.run or default_cascade_path(), use_searched=args.searched, **tta)


def _export_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m steeldefect.cascade export",
                                     description="Export a trained cascade for deployment (TensorFlow only).")
    parser.add_argument("--run", type=Path, default=None,
                        help="run directory or bundle with cascade.json (default: $STEELDEFECT_CASCADE or the latest run)")
    parser.add_argument("out", type=Path, help="a new folder for the export")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="savedmodel",
                        help="savedmodel: one SavedModel with gating and area filter (default); tflite: one .tflite "
                             "per stage, run by steeldefect.cascade.TFLiteCascade")
    parser.add_argument("--precision", choices=TFLITE_PRECISIONS, default="float32", help="TFLite weights")
    parser.add_argument("--searched", action="store_true", help="bake in the thresholds searched on validation")
    parser.add_argument("--tta", choices=TTA_CHOICES, help="bake in flip TTA (default: the cascade's)")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cascade = _cli_cascade(args)
        path = cascade.export(args.out, args.format, precision=args.precision)
    except (runfiles.RunFileError, OSError) as err:  # FileExistsError: a folder that is not empty
        if args.verbose:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    print(f"exported the cascade of {cascade.source} to {path} ({args.format}, {size:.1f} MB)")
    if args.format == "savedmodel":
        print(f"run it with TensorFlow alone: tf.saved_model.load({str(path)!r}).signatures"
              f"[{SERVING_SIGNATURE!r}](images=uint8 batch (N, H, W, 3)); what it holds: {path / 'assets' / METADATA_FILE}")
    else:
        print(f"run it: steeldefect.cascade.TFLiteCascade.load({str(path)!r}).predict(image)")
    return 0


def _evaluate_command(cascade: Cascade, data_dir: Path, json_path: Path | None) -> int:
    try:
        found = evaluate_folder(cascade, data_dir)
    except (FileNotFoundError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stage1, stage2 = found["stage1"], found["stage2"]
    auc = "n/a (one class only)" if stage1["roc_auc"] is None else f"{stage1['roc_auc']:.3f}"
    print(f"{found['n_images']} images ({stage1['n_defective']} defective) in {data_dir}")
    print(f"stage 1: ROC AUC {auc}, accuracy {stage1['accuracy']:.3f}")
    if stage2:
        print(f"stage 2: accuracy {stage2['accuracy']:.3f} per (image, class) on the {stage2['n_images']} defective images")
    print(f"Kaggle mean Dice: all masks empty {found['all_empty_dice']:.4f}; " + "; ".join(
        f"{name} {variant['kaggle_mean_dice']:.4f}" for name, variant in found["variants"].items()))
    if json_path:
        runfiles.write_json(json_path, found)
        print(f"evaluation: {json_path}")
    return 0

