"""``python -m steeldefect.experiments``: the one orchestrator of the paper's experiments.

Today it loads a Kaggle-layout data folder (by default the synthetic twin, generated once into ``data/synthetic``),
splits it as the paper does and prints the dataset statistics beside the paper's (Sections 3.1-3.2 and 4).
Training and Tables 2-7 come in later versions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import data, paper, synthetic
from .config import CLASS_IDS, SPLIT_SEED

DEFAULT_TWIN_DIR = Path("data/synthetic")  # relative to the working directory, as data/README.md says
DEFAULT_TWIN_IMAGES = 1500


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m steeldefect.experiments",
        description="Reproduce Yulianto et al. (2023) on a Kaggle-layout Severstal folder.",
    )
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="Kaggle-layout folder (train.csv, train_images/); default: the synthetic twin in "
                        f"{DEFAULT_TWIN_DIR}, generated on first use")
    parser.add_argument("--twin-images", type=int, default=DEFAULT_TWIN_IMAGES,
                        help="images of the synthetic twin when no --data-dir is given")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the train/val/test split")
    return parser


def describe(table, split) -> str:
    """The dataset statistics and split sizes as text, ours beside the paper's."""
    stats = data.dataset_stats(table)
    lines = [f"images: {stats.n_images} (paper: {paper.N_IMAGES})"]
    lines.append("rows per class: " + ", ".join(
        f"{c}: {stats.rows_per_class[c]} (paper {paper.ROWS_PER_CLASS[c]})" for c in CLASS_IDS))
    lines.append("images by number of classes: " + ", ".join(
        f"{k}: {stats.images_by_n_classes[k]} (paper {paper.IMAGES_BY_N_CLASSES[k]})" for k in range(4)))
    counts = split["split"].value_counts()
    lines.append("split: " + ", ".join(
        f"{s}: {int(counts.get(s, 0))} (paper {paper.SPLIT_SIZES[s]})" for s in ("train", "val", "test")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the experiments from the command line.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The process exit code.

    Example:
        >>> main(["--data-dir", "data/severstal"])
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data_dir = args.data_dir
    if data_dir is None:
        print(f"no --data-dir: using the synthetic Severstal twin ({args.twin_images} images) in {DEFAULT_TWIN_DIR}")
        data_dir = synthetic.make_synthetic_severstal(DEFAULT_TWIN_DIR, args.twin_images, seed=0)
    try:
        table = data.load_table(data_dir)
    except (FileNotFoundError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    split = data.split_table(table, seed=args.seed)
    print(describe(table, split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
