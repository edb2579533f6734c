"""Draw docs/twin.png: the synthetic twin's families of steel and its four defect classes, masks outlined.

Run: ``python docs/twin_figure.py [OUT] [--seed N]`` (default ``docs/twin.png``, seed 0). Twin images only: the
first defect-free image of each background family and the first image of each class (and each kind of class-3
mark) alone, from the twin's own plans (``synthetic.iter_plans``), each at half size with its family, distractors and classes written on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from steeldefect import synthetic
from steeldefect.config import CLASS_COLOURS

OUTLINE = {c: rgb[::-1] for c, rgb in CLASS_COLOURS.items()}  # BGR for OpenCV


def _panel(plan: synthetic.ImagePlan, title: str) -> np.ndarray:
    image = synthetic._render(plan)
    for class_id, mask in plan.masks.items():
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, OUTLINE[class_id], 3)
    image = cv2.resize(image, (800, 128), interpolation=cv2.INTER_AREA)
    cv2.rectangle(image, (0, 0), (8 + 9 * len(title), 22), (0, 0, 0), -1)
    cv2.putText(image, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path(__file__).with_name("twin.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    families: dict[str, synthetic.ImagePlan] = {}
    kinds = [(c, kind) for c in sorted(synthetic.KINDS) for kind in synthetic.KINDS[c]]
    classes: dict[tuple[int, str], synthetic.ImagePlan] = {}
    for plan in synthetic.iter_plans(2000, seed=args.seed):
        if not plan.masks and plan.family not in families:
            families[plan.family] = plan
        if len(plan.masks) == 1:
            class_id = next(iter(plan.masks))
            classes.setdefault((class_id, plan.looks[class_id]["kind"]), plan)
        if len(families) == len(synthetic.FAMILIES) and len(classes) == len(kinds):
            break
    panels = []
    for name in synthetic.FAMILIES:
        plan = families[name]
        extra = f" + {', '.join(plan.distractors)}" if plan.distractors else ""
        panels.append(_panel(plan, f"defect-free: {name}{extra}"))
    for class_id, kind in kinds:
        plan = classes[class_id, kind]
        look = plan.looks[class_id]
        panels.append(_panel(plan, f"class {class_id} ({look['kind']}, {look['blend']}) on {plan.family}"))
    cv2.imwrite(str(args.out), np.vstack(panels))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
