"""Tables 2-7 and the figures of the paper, built only from the files of a run directory.

Tables 2-6: one per backbone, the paper's layout (binary and multi-label classification: binary_crossentropy,
acc, f1_score, precision, recall; image segmentation: Defect-1..4 × dice_loss, dice_coef; columns Train /
Validation / Test). Table 7: for each metric and split the best value over the backbones (lowest for BCE and
dice loss) and which backbone. Also the comparison with the paper's numbers, the cascade ablation, Figures 3, 4,
9 and 11-13, a few overlays, ``results.json`` and ``report.md``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: works headless and inline in notebooks alike
from matplotlib.ticker import MaxNLocator

from . import paper, runfiles
from .config import CLASS_IDS, LOWER_IS_BETTER, SPLITS, STAGE1_ENCODER, TABLE_ROWS

SECTION = {"binary": "Binary classification", "multilabel": "Multi-label classification"}
COLUMNS = {"train": "Train", "val": "Validation", "test": "Test"}
TABLE_NUMBERS = {"efficientnetb0": 2, "efficientnetb1": 3, "efficientnetb2": 4, "efficientnetb3": 5, "efficientnetb4": 6}
CAPTION = ("Multi-label precision, recall and F1 are micro-averaged over (image, class) pairs and acc is the share "
           "of correct pairs; dice_coef is the mean per-image soft Dice over the images that contain the class and "
           "dice_loss = 1 - dice_coef. Exact dataset-level values (the paper most likely averaged per-batch values).")


def row_label(task: str, metric: str) -> tuple[str, str]:
    if task in SECTION:
        return SECTION[task], metric
    return "Image segmentation", f"Defect-{task.removeprefix('class')} {metric}"


def _stage_metrics(run_dir: Path, backbone: str, task: str) -> dict | None:
    """A task's metrics by split: its stage's ``metrics.json``, or for a class the joint UNet's values of it."""
    found = runfiles.stage_metrics(run_dir, backbone, task)
    if found is not None or task in SECTION:
        return found
    joint = runfiles.stage_metrics(run_dir, backbone, runfiles.JOINT_STAGE)
    return None if joint is None else {split: (joint[split] or {}).get(task) for split in SPLITS}


def collect(run_dir: str | Path, backbones) -> dict[str, dict[tuple[str, str], list[float | None]]]:
    """``{backbone: {(task, metric): [train, val, test]}}`` from the run's ``metrics.json`` files."""
    run_dir = Path(run_dir)
    values = {}
    for backbone in backbones:
        table = {}
        for task, metric in TABLE_ROWS:
            found = _stage_metrics(run_dir, backbone, task)
            table[(task, metric)] = [
                None if not found or not found.get(split) or found[split].get(metric) is None else float(found[split][metric])
                for split in SPLITS
            ]
        values[backbone] = table
    return values


def backbone_table(values: dict[tuple[str, str], list]) -> pd.DataFrame:
    """One backbone's table in the paper's layout."""
    index = pd.MultiIndex.from_tuples([row_label(*row) for row in TABLE_ROWS], names=["", "Metric"])
    return pd.DataFrame([values[row] for row in TABLE_ROWS], index=index, columns=list(COLUMNS.values()))


def best_table(all_values: dict[str, dict]) -> pd.DataFrame:
    """Table 7: per metric and split, the best value over the backbones and which backbone."""
    rows = []
    for task, metric in TABLE_ROWS:
        row = {}
        for k, split in enumerate(SPLITS):
            candidates = [(v[(task, metric)][k], b) for b, v in all_values.items() if v[(task, metric)][k] is not None]
            if not candidates:
                row[COLUMNS[split]], row[f"{COLUMNS[split]} backbone"] = None, None
                continue
            pick = min if metric in LOWER_IS_BETTER else max
            value, backbone = pick(candidates, key=lambda c: c[0])
            row[COLUMNS[split]], row[f"{COLUMNS[split]} backbone"] = value, backbone.replace("efficientnet", "").upper()
        rows.append(row)
    index = pd.MultiIndex.from_tuples([row_label(*r) for r in TABLE_ROWS], names=["", "Metric"])
    return pd.DataFrame(rows, index=index)


def _write_table(frame: pd.DataFrame, path: Path, title: str) -> None:
    def cell(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "—"
        return f"{value:.6f}" if isinstance(value, float) else value

    shown = frame.map(cell)
    flat = shown.reset_index()
    flat.loc[flat[""].duplicated(), ""] = ""  # the section name once, as in the paper
    runfiles.write_text(path.with_suffix(".md"), f"**{title}**\n\n{flat.to_markdown(index=False)}\n\n_{CAPTION}_\n")
    runfiles.write_text(path.with_suffix(".csv"), frame.to_csv())
    runfiles.write_text(path.with_suffix(".tex"), shown.to_latex(caption=title, escape=True))


def comparison_table(all_values: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for backbone, values in all_values.items():
        for task, metric in TABLE_ROWS:
            for k, split in enumerate(SPLITS):
                ours, theirs = values[(task, metric)][k], paper.TABLES[backbone][(task, metric)][k]
                rows.append({"backbone": backbone, "section": row_label(task, metric)[0],
                             "metric": row_label(task, metric)[1], "split": COLUMNS[split], "ours": ours,
                             "paper": theirs, "difference": None if ours is None else ours - theirs})
    return pd.DataFrame(rows)


def _get(mapping: dict, key):
    """A value by class id or count, whether the keys are ints (``DatasetStats``) or strings (JSON)."""
    return mapping[key] if key in mapping else mapping[str(key)]


def fig_bars(counts: dict, title: str, xlabel: str, paper_counts: dict | None = None) -> Figure:
    """A bar chart of counts, annotated, with the paper's counts in the title when given."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    keys = list(counts)
    ax.bar([str(k) for k in keys], [counts[k] for k in keys], color="#4477aa", label="this dataset")
    for i, k in enumerate(keys):
        ax.annotate(f"{counts[k]:,}", (i, counts[k]), ha="center", va="bottom", fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel="images")
    if paper_counts:
        ax.set_title(f"{title}\n(paper: {', '.join(f'{k}: {v:,}' for k, v in paper_counts.items())})", fontsize=9)
    fig.tight_layout()
    return fig


def fig_rows_per_class(rows_per_class: dict) -> Figure:
    """Figure 3: the number of defect rows (images) per class, beside the paper's counts."""
    return fig_bars({f"class {c}": _get(rows_per_class, c) for c in CLASS_IDS}, "Figure 3: defect rows per class",
                    "defect class", paper.ROWS_PER_CLASS)


def fig_classes_per_image(images_by_n_classes: dict) -> Figure:
    """Figure 4: images by the number of defect classes they hold, beside the paper's counts."""
    return fig_bars({k: _get(images_by_n_classes, k) for k in range(len(CLASS_IDS))},
                    "Figure 4: images by number of classes", "classes in the image", paper.IMAGES_BY_N_CLASSES)


def fig_areas(areas: dict, limits: dict) -> Figure:
    """Figure 9: per-class histograms of mask areas (256x1600 pixels) with the area limits as dashed lines."""
    fig = Figure(figsize=(14, 3.4))
    axes = fig.subplots(1, len(CLASS_IDS))
    for ax, c in zip(axes, CLASS_IDS, strict=True):
        values = np.asarray(_get(areas, c))
        if values.size:
            ax.hist(values, bins=30, color="#4477aa")
        low, high = _get(limits, c)
        for x in (low, high):
            ax.axvline(x, color="#cc3311", linestyle="--")
        ax.set(title=f"Defect_{c}: limits {low:,.0f}–{high:,.0f} px", xlabel="mask area (pixels at 256×1600)",
               ylabel="images")
    fig.suptitle("Figure 9: mask areas per class with the 2nd/98th-percentile limits (training split)")
    fig.tight_layout()
    return fig


def data_figures(stats: dict, limits: dict, figures: Path) -> list[Path]:
    """Figures 3, 4 and 9 from the dataset statistics saved by the run."""
    paths = [figures / "fig3_rows_per_class.png", figures / "fig4_classes_per_image.png", figures / "fig9_areas.png"]
    drawn = [fig_rows_per_class(stats["rows_per_class"]), fig_classes_per_image(stats["images_by_n_classes"]),
             fig_areas(stats["areas"], limits)]
    for fig, path in zip(drawn, paths, strict=True):
        fig.savefig(path, dpi=110)
    return paths


CURVES = {11: ("binary", ["loss", "acc", "f1_score", "precision", "recall"]),
          12: ("multilabel", ["loss", "acc", "f1_score", "precision", "recall"]),
          13: ("segmentation", ["loss", "dice_coef"])}
TASK_TITLES = {"binary": "binary classification", "multilabel": "multi-label classification",
               "segmentation": "image segmentation"}


def histories(run_dir: str | Path, backbone: str, task: str) -> list[tuple[str, pd.DataFrame]]:
    """``[(label, history)]`` of a backbone's stage: one for a classifier, one per UNet for segmentation."""
    remedy = "delete the stage's folder and rerun the experiments to train it again (they resume)"
    stages = list(runfiles.SEGMENTATION_STAGES) if task == "segmentation" else [task]
    paths = [(stage, runfiles.stage_dir(run_dir, backbone, stage) / runfiles.HISTORY_FILE) for stage in stages]
    return [(stage, runfiles.read_csv(path, ("epoch",), remedy)) for stage, path in sorted(paths) if path.is_file()]


def _metric_title(task: str, name: str) -> str:
    if name == "loss":
        return "segmentation loss" if task == "segmentation" else "binary_crossentropy"
    return name


def fig_curves(curves: list[tuple[str, pd.DataFrame]], task: str, title: str, names: list[str] | None = None) -> Figure:
    """Training and validation curves per epoch, one panel per metric (Figures 11-13)."""
    names = names or next(n for t, n in CURVES.values() if t == task)
    fig = Figure(figsize=(3.2 * len(names), 3))
    for ax, name in zip(np.atleast_1d(fig.subplots(1, len(names))), names, strict=True):
        for label, history in curves:
            for prefix, style in (("", "-o"), ("val_", "--o")):
                if prefix + name in history:
                    ax.plot(history["epoch"], history[prefix + name], style, markersize=3,
                            label=f"{label} {'validation' if prefix else 'train'}")
        ax.set(title=_metric_title(task, name), xlabel="epoch", ylabel=_metric_title(task, name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def curve_figures(run_dir: Path, backbones, figures: Path) -> list[Path]:
    """Figures 11-13: training curves (train and validation) of every backbone, from ``history.csv``."""
    written = []
    for number, (task, names) in CURVES.items():
        for backbone in backbones:
            found = histories(run_dir, backbone, task)
            if not found:
                continue
            fig = fig_curves(found, task, f"Figure {number}: {TASK_TITLES[task]}, {backbone}", names)
            path = figures / f"fig{number}_{backbone}.png"
            fig.savefig(path, dpi=100)
            written.append(path)
    return written


def fig_backbones(run_dir: str | Path, backbones, task: str, name: str, split: str = "val") -> Figure:
    """One metric's curve per backbone in one panel (e.g. validation loss of B0-B4 for a stage)."""
    prefix = "val_" if split == "val" else ""
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    for backbone in backbones:
        for label, history in histories(run_dir, backbone, task):
            if prefix + name in history:
                shown = backbone.replace("efficientnet", "").upper()
                ax.plot(history["epoch"], history[prefix + name], "-o", markersize=3,
                        label=shown if task != "segmentation" else f"{shown} {label}")
    what = f"{'validation' if prefix else 'training'} {_metric_title(task, name)}"
    ax.set(title=f"{TASK_TITLES[task]}: {what} of every backbone", xlabel="epoch", ylabel=what)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_pictures(pictures: list[tuple[str, np.ndarray]], title: str | None = None, columns: int = 1) -> Figure:
    """RGB pictures (e.g. ``cascade.overlay`` outputs) in a grid, each with its title; axes in pixels."""
    rows = math.ceil(len(pictures) / columns)
    height, width = pictures[0][1].shape[:2]
    fig = Figure(figsize=(7 * columns, max(1.6, 7 * height / width + 1.0) * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, (text, picture) in zip(axes, pictures, strict=False):
        ax.imshow(picture)
        ax.set_title(text, fontsize=9)
        ax.set(xlabel="x (pixels)", ylabel="y (pixels)")
    for ax in axes[len(pictures):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def paper_table(backbone: str) -> pd.DataFrame:
    """The paper's table for one backbone (Tables 2-6, from ``paper.py``) in the layout of ``backbone_table``."""
    return backbone_table({row: list(paper.TABLES[backbone][row]) for row in TABLE_ROWS})


def stage_tables(stage_metrics) -> pd.DataFrame:
    """``stage_table`` of several stages (e.g. the four per-class UNets) stacked."""
    return pd.concat([stage_table(m) for m in stage_metrics])


def decisions_table(results: dict) -> pd.DataFrame:
    """What the cascade decided per image and class: ``{image_id: CascadeResult}`` → one row per (image, class)."""
    rows = []
    for image_id, result in results.items():
        for k, class_id in enumerate(CLASS_IDS):
            rows.append({"image": image_id, "class": class_id, "defect prob (stage 1)": result.defect_prob,
                         "class prob (stage 2)": result.class_probs[k], "mask area (px)": result.areas[class_id],
                         "decision": result.decisions[class_id]})
    return pd.DataFrame(rows).set_index(["image", "class"])


def limits_table(limits: dict) -> pd.DataFrame:
    """Area limits per class (256x1600 pixels) beside the paper's (Section 3.5)."""
    return pd.DataFrame(
        [{"min area": _get(limits, c)[0], "max area": _get(limits, c)[1], "paper min": paper.AREA_THRESHOLDS[c][0],
          "paper max": paper.AREA_THRESHOLDS[c][1]} for c in CLASS_IDS],
        index=pd.Index([f"Defect_{c}" for c in CLASS_IDS], name="class"))


def split_sizes(table: pd.DataFrame) -> pd.DataFrame:
    """Images per split (a table with a ``split`` column) beside the paper's 9,048 / 2,263 / 1,257."""
    counts = table["split"].value_counts()
    rows = [{"images": int(counts.get(s, 0)), "share": counts.get(s, 0) / len(table), "paper": paper.SPLIT_SIZES[s],
             "paper share": paper.SPLIT_SIZES[s] / paper.N_IMAGES} for s in SPLITS]
    return pd.DataFrame(rows, index=pd.Index([COLUMNS[s] for s in SPLITS], name="split"))


def stage_table(metrics: dict) -> pd.DataFrame:
    """A stage's ``metrics.json`` as a table: metrics (and classes, for segmentation) by Train / Validation / Test."""
    rows = {}
    for split in SPLITS:
        found = metrics.get(split)
        if not found:
            continue
        if "binary_crossentropy" in found:  # a classifier
            for name in ("binary_crossentropy", "acc", "f1_score", "precision", "recall"):
                rows.setdefault(name, {})[COLUMNS[split]] = found[name]
            continue
        per_class = found if "dice_coef" not in found else {metrics["stage"]: found}
        for label, values in per_class.items():
            for name in ("dice_loss", "dice_coef"):
                key = f"Defect-{label.removeprefix('class')} {name}"
                rows.setdefault(key, {})[COLUMNS[split]] = None if not values else values[name]
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=[c for c in COLUMNS.values()])


EMPTY_REFERENCE = "all empty (reference)"


def validation_line(found: dict) -> str:
    """What the cascade scores on the validation images (``cascade.json``'s ``validation``), said plainly when the
    paper's rule falls below predicting no defect."""
    text = (f"On the validation split the cascade's Kaggle mean Dice is {found['paper_rule']:.4f} by the paper's rule "
            f"and {found['searched']:.4f} with the searched thresholds; predicting every mask empty scores "
            f"{found['all_empty']:.4f}.")
    if found["paper_rule"] < found["all_empty"]:
        text += (" **The paper's rule scores below predicting no defect here**: its stages are not good enough on "
                 "this data. The searched thresholds, which never predict a class where every setting is worse "
                 "than leaving it empty, are used by `Cascade.load(run, use_searched=True)`.")
    return text


def cascade_table(cascade_results: dict) -> pd.DataFrame:
    """The cascade ablation (``evaluate_cascade``'s output): per variant the Kaggle mean Dice, the Dice per class and,
    per class, ``tp/fp/fn``: the images where the class was predicted and present, predicted and absent, present
    and missed. A last row scores predicting every mask empty (Dice 1 on each image without the class, 0 on each
    with it), the floor a cascade must beat: a class the cascade never predicts scores exactly that."""
    rows = []
    for name, values in cascade_results["variants"].items():
        rows.append({"variant": name, "Kaggle mean Dice": values["kaggle_mean_dice"],
                     **{f"Dice {k}": v for k, v in values["per_class_dice"].items()},
                     **{f"tp/fp/fn {k}": f"{p['tp']}/{p['fp']}/{p['fn']}" for k, p in values["presence"].items()}})
    presence = next(iter(cascade_results["variants"].values()))["presence"]
    empty = {k: (p["fp"] + p["tn"]) / sum(p.values()) for k, p in presence.items()}
    rows.append({"variant": EMPTY_REFERENCE, "Kaggle mean Dice": sum(empty.values()) / len(empty),
                 **{f"Dice {k}": v for k, v in empty.items()},
                 **{f"tp/fp/fn {k}": f"0/0/{p['tp'] + p['fn']}" for k, p in presence.items()}})
    return pd.DataFrame(rows).set_index("variant")


def _training_text(config: dict) -> str:
    weights = config.get("encoder_weights")
    start = {None: "every stage from random initialisation", "imagenet": "ImageNet encoder weights",
             STAGE1_ENCODER: "stage 1 from random initialisation, stages 2-3 from stage 1's trained encoder"}
    pos_weight = config.get("multilabel_pos_weight")
    weighted = (f"; stage 2's positives weighted per class (--multilabel-pos-weight {pos_weight}, loss.json)"
                if pos_weight else "")
    return (f"{config.get('classifier_epochs')} epochs for the classifiers, {config.get('segmentation_epochs')} for "
            f"the UNets, {start.get(weights, f'encoder weights from {weights}')}{weighted}")


def untimed_note(stages_s: dict[str, float | None]) -> str:
    """What a run's wall time leaves out: the stages of ``timing.json``'s ``stages_s`` whose time is None.

    Example:
        >>> untimed_note({"efficientnetb0/binary": None, "efficientnetb0/joint": 60.0})
        ', without 1 of the 2 stages, whose time was not recorded'
    """
    missing = sum(seconds is None for seconds in stages_s.values())
    return f", without {missing} of the {len(stages_s)} stages, whose time was not recorded" if missing else ""


def _wall_time_lines(timing: dict) -> list[str]:
    """The report's lines on the run's wall time (timing.json): the total, and a table of minutes per stage."""
    text = f"Wall time: {timing['total_s'] / 60:.1f} min"
    stages = timing.get("stages_s")
    if stages is None:  # written before stages were timed: this process only
        return [text + " (the last process only: an interrupted and resumed run took longer).", ""]
    lines = [text + untimed_note(stages)
             + " (training and evaluating each stage, summed over interrupted attempts, then the cascade).", ""]
    frame = _by_backbone_and_stage({name: None if s is None else s / 60 for name, s in stages.items()})
    lines += ["Minutes per stage (blank: not recorded):", "", frame.to_markdown(floatfmt=".1f", missingval=""), ""]
    peaks = timing.get("stages_peak_rss_gib")
    if peaks and any(v is not None for v in peaks.values()):
        frame = _by_backbone_and_stage(peaks)
        lines += ["Peak memory (RSS) per stage in GiB, training and evaluating it (blank: not recorded):", "",
                  frame.to_markdown(floatfmt=".2f", missingval=""), ""]
    return lines + _phase_lines(timing.get("phases"))


def _by_backbone_and_stage(values: dict[str, float | None]) -> pd.DataFrame:
    """``{"backbone/stage": value}`` as a table, backbones down and stages across (None: a blank cell)."""
    long = pd.DataFrame([(*name.split("/"), value) for name, value in values.items()],
                        columns=["backbone", "stage", "value"])
    frame = long.pivot(index="backbone", columns="stage", values="value")
    frame = frame.reindex(index=list(dict.fromkeys(long["backbone"])), columns=list(dict.fromkeys(long["stage"])))
    return frame.astype(object).where(frame.notna(), None)  # tabulate writes missingval for None, not for NaN


def _phase_lines(phases: dict | None) -> list[str]:
    """The run's phases after training (timing.json's ``phases``, ``meter.phase``): time, images/s, peak memory."""
    if not phases:
        return []
    rows = [(name, found["seconds"] / 60, None if found.get("images") is None else str(found["images"]),
             found.get("images_per_s"), found.get("peak_rss_gib")) for name, found in phases.items()]
    frame = pd.DataFrame(rows, columns=["phase", "minutes", "images", "images/s", "peak RSS (GiB)"])
    frame = frame.astype(object).where(frame.notna(), None)
    return ["After training (each phase's own peak memory):", "",
            frame.to_markdown(index=False, floatfmt=".2f", missingval=""), ""]


def sizes_text(config: dict) -> str:
    """The run's input sizes: ``64x320``, or ``256x800 (UNets), 256x512 (classifiers)`` where they differ."""
    unet = "x".join(map(str, config["image_size"]))
    classifier = "x".join(map(str, config.get("classifier_image_size") or config["image_size"]))
    return unet if unet == classifier else f"{unet} (UNets), {classifier} (classifiers)"


def dry_run_text(config: dict) -> str:
    """What a dry run (``--max-steps-per-epoch``) measures, for the console and the report."""
    return (f"at most {config['max_steps_per_epoch']} training and validation batches per epoch "
            "(--max-steps-per-epoch); every split is evaluated, the thresholds searched and the cascade built on all "
            "the images. The models are barely trained: this run times the pipeline, its tables do not measure a "
            "detector")


def counts_text(counts: dict) -> str:
    return ", ".join(f"{split} {n}" for split, n in counts.items())


def plan_lines(plan: dict) -> list[str]:
    """The data plan's conditions in words, one line each (nothing when every stage has what it needs)."""
    lines = [f"{m['ImageId']} (class {m['class_id']}) moved from {m['from']} to train: the split left class "
             f"{m['class_id']} without a training image" for m in plan.get("moved_to_train", [])]
    lines += [f"{image_id} left out: {problem}" for image_id, problem in plan.get("bad_images", {}).items()]
    for stage, found in plan["stages"].items():
        if found["not_trainable"]:
            lines.append(f"stage {stage} is not trainable: {found['not_trainable']}")
        elif not found["val"]:
            counts = {split: found[split] for split in SPLITS}
            lines.append(f"stage {stage} trains without validation: no validation image ({counts_text(counts)})")
    lines += [f"class {c} is never predicted: {why}" for c, why in plan["never_predicted"].items()]
    return lines


def _write_cascade_table(cascade_results: dict, tables: Path) -> None:
    """``tables/cascade.md`` and ``.csv``: the cascade's ablation (``cascade_eval.json``)."""
    frame = cascade_table(cascade_results)
    runfiles.write_text(tables / "cascade.md",
        f"**Cascade ablation on the {cascade_results['split']} split ({cascade_results['n_images']} images, at "
        f"{cascade_results['image_size'][0]}x{cascade_results['image_size'][1]})**\n\n"
        + frame.to_markdown(floatfmt=".4f") + "\n\n_tp/fp/fn: images where the class was predicted and "
        "present / predicted and absent / present and not predicted. The last row predicts every mask empty: "
        "the score a cascade must beat, and exactly a class's score when the cascade never predicts it._\n")
    runfiles.write_text(tables / "cascade.csv", frame.to_csv())


def build_report(run_dir: str | Path) -> dict:
    """Write every table, figure, ``results.json`` and ``report.md`` of a run from its files; returns results."""
    run_dir = Path(run_dir)
    config = runfiles.read_json(run_dir / runfiles.CONFIG_FILE)
    backbones = config["backbones"]
    tables, figures = run_dir / "tables", run_dir / "figures"
    tables.mkdir(exist_ok=True)
    figures.mkdir(exist_ok=True)
    all_values = collect(run_dir, backbones)
    for backbone in backbones:
        number = TABLE_NUMBERS[backbone]
        _write_table(backbone_table(all_values[backbone]), tables / f"table{number}",
                     f"Table {number}. Evaluation results for the EfficientNet-{backbone[-2:].upper()} model")
    _write_table(best_table(all_values), tables / "table7", "Table 7. Evaluation results with the best measurement values")
    synthetic = config.get("synthetic", False)
    heading = ("The data is the synthetic twin: this comparison is about the pipeline, not the numbers.\n\n"
               if synthetic else "The data is the Kaggle Severstal data.\n\n")
    comparison = comparison_table(all_values)
    runfiles.write_text(tables / "paper_comparison.md",
        "# Our values beside the paper's\n\n" + heading + comparison.to_markdown(index=False, floatfmt=".6f") + "\n")
    runfiles.write_text(tables / "paper_comparison.csv", comparison.to_csv(index=False))
    cascade_results = runfiles.read_optional_json(run_dir / runfiles.CASCADE_EVAL_FILE)
    if cascade_results:
        _write_cascade_table(cascade_results, tables)
    stats = runfiles.read_json(run_dir / runfiles.STATS_FILE)
    limits = runfiles.read_json(run_dir / runfiles.THRESHOLDS_FILE)["limits"]
    figure_paths = data_figures(stats, limits, figures) + curve_figures(run_dir, backbones, figures)
    figure_paths += sorted(figures.glob("overlay_*.png"))
    results = {
        "config": config,
        "tables": {b: {f"{t}/{m}": v for (t, m), v in all_values[b].items()} for b in backbones},
        "cascade": cascade_results,
        "wall_time_s": runfiles.read_optional_json(run_dir / runfiles.TIMING_FILE),
    }
    runfiles.write_json(run_dir / "results.json", results)
    lines = [f"# Run report: {run_dir.name}", "", f"Profile `{config['profile']}`, data `{config['data_dir']}`"
             f"{' (synthetic twin)' if synthetic else ''}, image size {sizes_text(config)}, backbones "
             f"{', '.join(backbones)}; {_training_text(config)}.", ""]
    if config.get("max_steps_per_epoch"):
        lines += [f"**Dry run**: {dry_run_text(config)}.", ""]
    plan = runfiles.read_optional_json(run_dir / runfiles.PLAN_FILE)
    if plan and plan_lines(plan):
        lines += ["What this data gave each stage (decided before training):", ""]
        lines += [f"- {line}" for line in plan_lines(plan)] + [""]
    if results["wall_time_s"]:
        lines += _wall_time_lines(results["wall_time_s"])
    for backbone in backbones:
        number = TABLE_NUMBERS[backbone]
        lines += [(tables / f"table{number}.md").read_text(), ""]
    lines += [(tables / "table7.md").read_text(), ""]
    if cascade_results:
        lines += [(tables / "cascade.md").read_text(), ""]
    chosen = runfiles.read_optional_json(run_dir / runfiles.CASCADE_FILE) or {}
    if chosen.get("validation"):
        lines += [validation_line(chosen["validation"]), ""]
    lines += ["[Comparison with the paper](tables/paper_comparison.md)", "", "## Figures", ""]
    lines += [f"![{p.stem}](figures/{p.name})" for p in figure_paths]
    runfiles.write_text(run_dir / runfiles.REPORT_FILE, "\n".join(lines) + "\n")
    return results
