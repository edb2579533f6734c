import hashlib
import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from steeldefect import data, paper, realism, rle, synthetic


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return synthetic.make_synthetic_severstal(tmp_path_factory.mktemp("twin") / "twin", 40, seed=3)


@pytest.fixture(scope="module")
def plans():
    return list(synthetic.iter_plans(2000, seed=0))


def _digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_kaggle_layout(twin):
    assert sorted(p.name for p in twin.iterdir()) == [
        "sample_submission.csv", "test_images", "train.csv", "train_images", "twin.json"
    ]
    names = sorted(p.name for p in (twin / "train_images").iterdir())
    assert len(names) == 40 and all(re.fullmatch(r"[0-9a-f]{9}\.jpg", n) for n in names)
    assert (twin / "train.csv").read_text().splitlines()[0] == "ImageId,ClassId,EncodedPixels"
    image = cv2.imread(str(twin / "train_images" / names[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (256, 1600, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - image[:, :, :1]).max() <= 2  # grayscale stored as 3 channels
    test_names = sorted(p.name for p in (twin / "test_images").iterdir())
    assert len(test_names) == 4 and not set(test_names) & set(names)
    submission = pd.read_csv(twin / "sample_submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert len(submission) == 4 * len(test_names) and set(submission["ImageId"]) == set(test_names)


def test_twin_reads_through_the_real_data_path(twin):
    table = data.load_table(twin)
    assert len(table) == 40
    for column in ("Defect_1", "Defect_2", "Defect_3", "Defect_4"):
        for text in table[column]:
            if text:
                assert rle.decode(text).sum() > 0


def test_deterministic_and_seed_dependent(tmp_path, twin):
    again = synthetic.make_synthetic_severstal(tmp_path / "again", 40, seed=3)
    assert _digest(again) == _digest(twin)
    other = synthetic.make_synthetic_severstal(tmp_path / "other", 40, seed=4)
    assert (other / "train.csv").read_text() != (twin / "train.csv").read_text()


def test_reuse_and_refusal(tmp_path):
    root = synthetic.make_synthetic_severstal(tmp_path / "t", 5, seed=0)
    stamp = (root / "train.csv").stat().st_mtime_ns
    assert synthetic.make_synthetic_severstal(root, 5, seed=0) == root
    assert (root / "train.csv").stat().st_mtime_ns == stamp  # identical spec: reused, not rewritten
    synthetic.make_synthetic_severstal(root, 6, seed=0)  # another spec: regenerated in place
    assert len(list((root / "train_images").iterdir())) == 6
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a synthetic twin"):
        synthetic.make_synthetic_severstal(tmp_path / "mine", 5)
    with pytest.raises(ValueError, match="n_images must be >= 1"):
        synthetic.make_synthetic_severstal(tmp_path / "zero", 0)


def test_plans_match_the_written_masks(twin):
    table = data.load_table(twin).set_index("ImageId")
    for plan in synthetic.iter_plans(40, seed=3):
        for class_id in (1, 2, 3, 4):
            text = table.loc[plan.image_id, f"Defect_{class_id}"]
            if class_id in plan.masks:
                assert np.array_equal(rle.decode(text), plan.masks[class_id])
            else:
                assert text == ""


def test_statistics_follow_the_paper(plans):
    n = len(plans)
    n_classes = np.array([len(p.masks) for p in plans])
    total = paper.N_IMAGES
    for k, count in paper.IMAGES_BY_N_CLASSES.items():
        assert abs((n_classes == k).sum() - n * count / total) <= 1, k
    rows = {c: sum(c in p.masks for p in plans) for c in (1, 2, 3, 4)}
    for c, count in paper.ROWS_PER_CLASS.items():
        assert abs(rows[c] - n * count / total) <= 2, (c, rows[c])


def test_area_percentiles_within_30_percent_of_the_paper_thresholds():
    # 8,000 images (areas only, not kept): class 4 then has ~500 masks, so that its empirical 2nd percentile
    # varies by ~12 % between seeds (with the ~130 masks of 2,000 images it varied by ~24 %, near the tolerance)
    found = {c: [] for c in paper.AREA_THRESHOLDS}
    for plan in synthetic.iter_plans(8000, seed=0):
        for class_id, mask in plan.masks.items():
            found[class_id].append(int(mask.sum()))
    for class_id, (low, high) in paper.AREA_THRESHOLDS.items():
        areas = np.array(found[class_id])
        p2, p98 = np.percentile(areas, [2, 98])
        assert 0.7 * low <= p2 <= 1.3 * low, (class_id, p2, low)
        assert 0.7 * high <= p98 <= 1.3 * high, (class_id, p98, high)


def test_masks_stay_on_the_steel(plans):
    for plan in plans[:400]:
        for mask in plan.masks.values():
            assert mask.any()
            assert not mask[:, : plan.steel[0]].any() and not mask[:, plan.steel[1] :].any()


def test_no_background_shortcut(plans):
    """Defect-free and defective images share the same spread of backgrounds."""
    defective = np.array([bool(p.masks) for p in plans])
    band = np.array([p.steel != (0, 1600) for p in plans])
    assert abs(band[defective].mean() - band[~defective].mean()) < 0.05
    sample = [p for p in plans[:160]]
    brightness = np.array([
        np.median(synthetic._render(p)[:, :, 0][~np.any(list(p.masks.values()) or [np.zeros((256, 1600), bool)], axis=0)])
        for p in sample
    ])
    flags = np.array([bool(p.masks) for p in sample])
    assert abs(np.median(brightness[flags]) - np.median(brightness[~flags])) < 12
    assert abs(brightness[flags].std() - brightness[~flags].std()) < 8


def test_steel_families_and_distractors_are_drawn_independently_of_the_defects(plans):
    """Every family of steel and every distractor (water spots, smears, lines...) lies on defect-free and defective
    images alike, in about the same shares: what the steel looks like does not tell the label."""
    defective = np.array([bool(p.masks) for p in plans])
    assert {p.family for p in plans} == set(synthetic.FAMILIES)
    for family, share in synthetic.FAMILIES.items():
        on = np.array([p.family == family for p in plans])
        assert abs(on[defective].mean() - share) < 0.05 and abs(on[~defective].mean() - share) < 0.05, family
    for name, share in synthetic.DISTRACTORS.items():
        on = np.array([name in p.distractors for p in plans])
        assert abs(on[defective].mean() - share) < 0.05 and abs(on[~defective].mean() - share) < 0.05, name


def test_defects_change_pixels_only_inside_their_masks():
    """Labels only where pixels changed, and every mask's pixels changed: a defect is drawn inside its mask and
    nowhere else (no seam outside it gives the label away), and it visibly changes what is inside."""
    for plan in [p for p in synthetic.iter_plans(60, seed=1) if p.masks][:12]:
        steel = synthetic._background(np.random.default_rng(plan.background_seed), plan.steel, plan.family,
                                      plan.distractors)
        drawn = synthetic._render(plan)[:, :, 0].astype(int)
        plain = np.clip(steel, 0, 255).astype(np.uint8).astype(int)
        inside = np.any(list(plan.masks.values()), axis=0)
        assert np.array_equal(drawn[~inside], plain[~inside])
        for class_id, mask in plan.masks.items():
            changed = np.abs(drawn - plain)[mask.astype(bool)]
            assert (changed > 2).mean() > 0.05, (plan.image_id, class_id)


def test_mask_kinds_per_class(plans):
    """Annotated as real steel is: class 1 pits, class 2 scratch boxes, class 3 strips, flake groups or scuffs,
    class 4 rough patches; class 3 has its three kinds in about the planned shares."""
    kinds = {c: [p.looks[c]["kind"] for p in plans if c in p.masks] for c in (1, 2, 3, 4)}
    assert set(kinds[1]) == {"pits"} and set(kinds[2]) == {"scratch"} and set(kinds[4]) == {"rough"}
    assert set(kinds[3]) == set(synthetic.KINDS[3]) == {"strips", "flecks", "scuffs"}
    for kind, share in synthetic.KINDS[3].items():
        assert abs(np.mean([k == kind for k in kinds[3]]) - share) < 0.06, kind


def test_looks_vary_within_a_class(plans):
    looks = [p.looks[3] for p in plans if 3 in p.masks][:200]
    contrast = np.array([look["contrast"] for look in looks])
    assert 0.45 < (contrast < 0).mean() < 0.75  # class-3 marks are darker or brighter than the steel around them
    assert np.percentile(np.abs(contrast), 90) > 1.8 * np.percentile(np.abs(contrast), 10)
    assert np.std([look["texture"] for look in looks]) > 5  # grey levels
    assert {look["blend"] for look in looks} == {"replace", "add"}
    assert np.std([look["opacity"] for look in looks]) > 0.05
    assert len({look["seed"] for look in looks}) == len(looks)
    areas = [p.masks[1].sum() for p in plans if 1 in p.masks]
    assert np.percentile(areas, 90) > 4 * np.percentile(areas, 10)


def test_is_twin_recognises_the_marker(tmp_path):
    root = synthetic.make_synthetic_severstal(tmp_path / "twin", 3, seed=0, n_test_images=2)
    assert synthetic.is_twin(root)
    (tmp_path / "kaggle").mkdir()
    (tmp_path / "kaggle" / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    assert not synthetic.is_twin(tmp_path / "kaggle") and not synthetic.is_twin(tmp_path / "missing")


def test_defect_contrast_scales_the_defects_only(tmp_path):
    real = list(synthetic.iter_plans(30, seed=2))
    easy = list(synthetic.iter_plans(30, seed=2, defect_contrast=3.0))
    for a, b in zip(real, easy, strict=True):
        assert a.image_id == b.image_id and a.steel == b.steel and a.masks.keys() == b.masks.keys()
        assert all(np.array_equal(a.masks[c], b.masks[c]) for c in a.masks)
        for c in a.masks:
            assert b.looks[c]["contrast"] == pytest.approx(3 * a.looks[c]["contrast"])
            assert b.looks[c]["texture"] == pytest.approx(3 * a.looks[c]["texture"])
        image_a, image_b = synthetic._render(a), synthetic._render(b)
        if not a.masks:
            assert np.array_equal(image_a, image_b)  # the steel itself is the same
        else:
            near = cv2.dilate(np.any(list(a.masks.values()), axis=0).astype(np.uint8), np.ones((15, 15), np.uint8))
            assert np.array_equal(image_a[near == 0], image_b[near == 0])
    root = synthetic.make_synthetic_severstal(tmp_path / "easy", 3, seed=0, defect_contrast=2.5)
    assert json.loads((root / "twin.json").read_text())["defect_contrast"] == 2.5
    with pytest.raises(ValueError, match="defect_contrast must be > 0, got 0"):
        synthetic.make_synthetic_severstal(tmp_path / "none", 3, defect_contrast=0)


def test_the_steel_is_grainy_along_the_rows():
    """The steel's grain is crisp at the pixel scale and runs along the rows (short dashes, as rolling leaves them):
    neighbours along a row are alike, neighbours across rows are not."""
    for seed in range(5):
        grain = synthetic._grain(np.random.default_rng(seed))
        assert grain.shape == (256, 1600) and grain.dtype == np.float32
        along = np.corrcoef(grain[:, :-1].ravel(), grain[:, 1:].ravel())[0, 1]
        across = np.corrcoef(grain[:-1, :].ravel(), grain[1:, :].ravel())[0, 1]
        assert along > 0.3 and across < along - 0.1, (seed, along, across)
        assert 2 < grain.std() < 12, seed  # grey levels


def test_class3_strips_are_bundles_of_thin_lines_along_the_box():
    """A class-3 strip is drawn as thin scratch lines along its box (plus glints), not as a smooth trough: inside a
    tall box the texture changes far more across the columns than along them, and it reaches the box's ends."""
    mask = np.zeros((256, 200), bool)
    mask[10:250, 80:120] = True
    look = {"polarity": -1.0, "light": 45.0}
    texture, cover = synthetic._scratches(np.random.default_rng(4), mask, look)
    assert texture.shape == cover.shape == mask.shape and texture.dtype == cover.dtype == np.float32
    inside = texture[20:240, 85:115]
    across = np.abs(np.diff(inside, axis=1)).mean()
    along = np.abs(np.diff(inside, axis=0)).mean()
    assert across > 2 * along, (across, along)
    assert not cover[~mask].any() and cover[mask].mean() > 0.8
    assert np.abs(texture[15:40, 85:115]).max() > 0.3 and np.abs(texture[220:245, 85:115]).max() > 0.3


def test_relief_is_a_lit_step_with_lumps():
    """Class-4 patches and class-3 flake groups are relief: lit from the side, a raised (or sunken) region has one
    bright and one dark flank, of opposite sign at its left and right rims, and a lumpy top."""
    mask = np.zeros((128, 300), bool)
    mask[20:108, 60:240] = True
    signs = set()
    for seed in range(6):
        relief = synthetic._relief(np.random.default_rng(seed), mask, {"light": 0.0}, (8.0, 30.0))
        assert relief.shape == mask.shape and relief.dtype == np.float32
        left, right = relief[20:108, 58:64].mean(), relief[20:108, 236:242].mean()
        assert left * right < 0 and min(abs(left), abs(right)) > 0.3, (seed, left, right)
        signs.add(bool(left > 0))
        assert relief[30:98, 75:225].std() > 0.3, seed  # lumps inside, not a flat top
    assert signs == {True, False}  # raised and sunken


def test_class3_scuffs_are_bright_streaks_along_the_rows(plans):
    """A class-3 scuff is where the steel shines: bright streaks that run along the rows (the texture changes far
    more from row to row than along a row), brighter than the steel around it whatever the look's contrast."""
    mask = np.zeros((128, 400), bool)
    mask[14:114, 40:360] = True
    for seed in range(4):
        texture, cover = synthetic._scuffs(np.random.default_rng(seed), mask, {"light": 45.0})
        assert texture.shape == cover.shape == mask.shape and texture.dtype == cover.dtype == np.float32
        inside = texture[20:108, 50:350]
        assert inside.min() >= 1.0 and inside.mean() / inside.std() > 1.5, seed  # bright everywhere, not zero-mean
        across = np.abs(np.diff(inside, axis=0)).mean()
        along = np.abs(np.diff(inside, axis=1)).mean()
        assert across > 2 * along, (seed, across, along)
        assert not cover[~mask].any() and cover[mask].mean() > 0.9
    scuffed = [p for p in plans if 3 in p.masks and p.looks[3]["kind"] == "scuffs"][:8]
    assert len(scuffed) == 8 and any(p.looks[3]["contrast"] < 0 for p in scuffed)
    for plan in scuffed:
        grey = synthetic._render(plan)[:, :, 0]
        assert realism.defect_shape(grey, plan.masks[3])["contrast"] > 10, plan.image_id
