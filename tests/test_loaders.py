import cv2
import numpy as np
import pytest
import tensorflow as tf

from steeldefect import data, loaders, rle, synthetic

SIZE = (64, 320)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    root = synthetic.make_synthetic_severstal(tmp_path_factory.mktemp("twin") / "twin", 30, seed=1)
    return root, data.load_table(root)


def _all(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize(
    ("task", "class_id", "target_shape"),
    [("binary", None, (1,)), ("multilabel", None, (4,)), ("segmentation", 3, (*SIZE, 1)),
     ("segmentation", None, (*SIZE, 4)), ("masks", None, (*SIZE, 4))],
)
def test_element_spec_and_row_selection(twin, task, class_id, target_shape):
    root, table = twin
    ds = loaders.make_dataset(table, root / "train_images", task, class_id=class_id, image_size=SIZE, batch_size=4)
    image_spec, target_spec = ds.element_spec
    assert image_spec.shape.as_list() == [None, *SIZE, 3] and image_spec.dtype == tf.uint8
    assert tuple(target_spec.shape.as_list()[1:]) == target_shape
    assert target_spec.dtype == (tf.uint8 if task in ("segmentation", "masks") else tf.float32)
    images, targets = _all(ds)
    assert len(images) == len(targets) == len(loaders.select_rows(table, task, class_id))
    expected = {"binary": len(table), "masks": len(table), "multilabel": int(table["has_defect"].sum()),
                "segmentation": int((table["Defect_3"] != "").sum()) if class_id else int(table["has_defect"].sum())}
    assert len(images) == expected[task]


def test_targets_match_the_table(twin):
    root, table = twin
    _, binary = _all(loaders.make_dataset(table, root / "train_images", "binary", image_size=SIZE, batch_size=8))
    assert binary[:, 0].tolist() == table["has_defect"].astype(float).tolist()
    _, multi = _all(loaders.make_dataset(table, root / "train_images", "multilabel", image_size=SIZE, batch_size=8))
    assert np.array_equal(multi, data.class_labels(table[table["has_defect"]]).astype(np.float32))


def test_images_and_masks_are_the_files_resized(twin):
    root, table = twin
    rows = table[table["has_defect"]]
    images, masks = _all(loaders.make_dataset(rows, root / "train_images", "segmentation", image_size=(256, 1600), batch_size=2))
    first = rows.iloc[0]
    raw = tf.io.decode_jpeg(tf.io.read_file(str(root / "train_images" / first["ImageId"])), channels=3,
                            dct_method=loaders.DCT_METHOD)  # the loader decodes as the cascade does (accurate DCT)
    assert np.array_equal(images[0], raw.numpy())
    for c in (1, 2, 3, 4):
        assert np.array_equal(masks[0, :, :, c - 1], rle.decode(first[f"Defect_{c}"]))
    _, small = _all(loaders.make_dataset(rows.head(1), root / "train_images", "segmentation", image_size=(128, 800), batch_size=1))
    full = np.stack([rle.decode(first[f"Defect_{c}"]) for c in (1, 2, 3, 4)], -1)
    # nearest neighbour with half-pixel centres keeps every other pixel, starting at the second
    assert np.array_equal(small[0], full[1::2, 1::2])


def _square_table(tmp_path, n=32, rows=slice(20, 44), cols=slice(100, 180)):
    """``n`` rows of one 64x320 image: a bright rectangle on black, with its mask as class 1."""
    images_dir = tmp_path / "train_images"
    images_dir.mkdir()
    mask = np.zeros((64, 320), np.uint8)
    mask[rows, cols] = 1
    image = np.where(mask[:, :, None] == 1, 250, 10).astype(np.uint8).repeat(3, axis=2)
    tf.io.write_file(str(images_dir / "a.jpg"), tf.io.encode_jpeg(image, quality=100))
    table = data.pd.DataFrame({"ImageId": ["a.jpg"] * n, "Defect_1": [rle.encode(mask)] * n,
                               "Defect_2": [""] * n, "Defect_3": [""] * n, "Defect_4": [""] * n})
    table["has_defect"], table["n_defects"] = True, 1
    return table, images_dir, mask


def test_augmentation_keeps_masks_aligned_with_images(tmp_path):
    """A bright square on black with its mask: after flips the mask must still cover the bright pixels."""
    table, images_dir, _ = _square_table(tmp_path, 16, slice(5, 20), slice(10, 60))
    tf.random.set_seed(0)
    ds = loaders.make_dataset(table, images_dir, "segmentation", class_id=1, image_size=(64, 320), batch_size=16,
                              augment=True, mask_shape=(64, 320))
    images, masks = _all(ds)
    corners = set()
    for x, m in zip(images, masks, strict=True):
        assert x.dtype == np.uint8
        bright = x.mean(axis=-1) > x.mean()
        assert (bright == (m[:, :, 0] > 0)).mean() > 0.99
        rows, cols = np.nonzero(m[:, :, 0])
        corners.add((rows.min() < 32, cols.min() < 160))
    assert len(corners) >= 3  # flips really happened, in both directions


def test_shuffle_is_seeded_and_cache_gives_the_same_data(twin):
    root, table = twin
    kwargs = dict(image_size=SIZE, batch_size=30)
    plain = _all(loaders.make_dataset(table, root / "train_images", "binary", **kwargs))
    cached = loaders.make_dataset(table, root / "train_images", "binary", cache=True, **kwargs)
    for _ in range(2):
        np.testing.assert_array_equal(_all(cached)[0], plain[0])
    a = _all(loaders.make_dataset(table, root / "train_images", "binary", shuffle=True, seed=5, **kwargs))[0]
    b = _all(loaders.make_dataset(table, root / "train_images", "binary", shuffle=True, seed=5, **kwargs))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, plain[0])
    np.testing.assert_allclose(np.sort(a.reshape(30, -1).sum(1)), np.sort(plain[0].reshape(30, -1).sum(1)), rtol=1e-5)


def test_bad_arguments(twin):
    root, table = twin
    images_dir = root / "train_images"
    with pytest.raises(ValueError, match="unknown task 'boxes'; expected one of binary, multilabel, segmentation, masks"):
        loaders.make_dataset(table, images_dir, "boxes", image_size=SIZE, batch_size=2)
    with pytest.raises(ValueError, match="class_id=5 is only for task='segmentation' and must be one of"):
        loaders.make_dataset(table, images_dir, "segmentation", class_id=5, image_size=SIZE, batch_size=2)
    with pytest.raises(ValueError, match="class_id=1 is only for task='segmentation'"):
        loaders.make_dataset(table, images_dir, "binary", class_id=1, image_size=SIZE, batch_size=2)
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\), got 64"):
        loaders.make_dataset(table, images_dir, "binary", image_size=64, batch_size=2)
    clean = table[~table["has_defect"]]
    with pytest.raises(ValueError, match="no images for task 'multilabel' in a table of"):
        loaders.make_dataset(clean, images_dir, "multilabel", image_size=SIZE, batch_size=2)


def test_every_real_mask_from_the_loader_equals_its_rle(real_dir):
    """At full size the loader's masks (the pure-TF RLE decode) are exactly rle.decode of each real row."""
    table = data.load_table(real_dir)
    dataset = loaders.make_dataset(table, real_dir / "train_images", "masks", image_size=(256, 1600), batch_size=8)
    batches = list(dataset)
    images = np.concatenate([x.numpy() for x, _ in batches])
    masks = np.concatenate([y.numpy() for _, y in batches])
    assert images.shape == (43, 256, 1600, 3) and masks.shape == (43, 256, 1600, 4) and masks.dtype == np.uint8
    compared = 0
    for i, (_, row) in enumerate(table.iterrows()):
        for k in range(4):
            expected = rle.decode(row[f"Defect_{k + 1}"])
            assert np.array_equal(masks[i, :, :, k], expected), (row["ImageId"], k + 1)
            compared += bool(expected.any())
    assert compared == 42  # every defect row of the real train.csv


def test_the_source_augmentation_moves_image_and_mask_together(tmp_path):
    """The UNets' augmentation of the source (shifts, zoom, flips, with probability 0.65 per batch): the mask still
    covers the bright pixels, stays 0/1, and some batches moved while others did not (16 batches)."""
    table, images_dir, mask = _square_table(tmp_path, n=64)
    ds = loaders.make_dataset(table, images_dir, "segmentation", class_id=1, image_size=(64, 320), batch_size=4,
                              augment=True, augmentation="source", mask_shape=(64, 320), seed=3)
    images, masks = _all(ds)
    assert images.dtype == np.uint8 and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    moved, kernel = 0, np.ones((3, 3), np.uint8)
    for x, m in zip(images, masks, strict=True):
        bright = x.mean(axis=-1) > 127
        # image and mask agree everywhere but on the square's edge (bilinear pixels, nearest-neighbour mask)
        assert bright[cv2.erode(m[:, :, 0], kernel) == 1].all() and not bright[cv2.dilate(m[:, :, 0], kernel) == 0].any()
        moved += not np.array_equal(m[:, :, 0], mask)
    assert 0 < moved < len(images)  # batches untouched (p = 0.35 + parts off) and moved ones
    again = _all(loaders.make_dataset(table, images_dir, "segmentation", class_id=1, image_size=(64, 320),
                                      batch_size=4, augment=True, augmentation="source", mask_shape=(64, 320), seed=3))
    assert np.array_equal(again[1], masks)  # seeded


def test_the_source_augmentation_of_the_classifiers_changes_every_batch(tmp_path):
    table, images_dir, _ = _square_table(tmp_path, n=8)
    plain, _ = _all(loaders.make_dataset(table, images_dir, "binary", image_size=(64, 320), batch_size=4,
                                         mask_shape=(64, 320)))
    images, labels = _all(loaders.make_dataset(table, images_dir, "binary", image_size=(64, 320), batch_size=4,
                                               augment=True, augmentation="source", mask_shape=(64, 320)))
    assert images.dtype == np.uint8 and labels.tolist() == [[1.0]] * 8
    assert all(not np.array_equal(x, plain[0]) for x in images)  # shifts of up to 20 % move every image
    with pytest.raises(ValueError, match="unknown augmentation 'heavy'; valid: ours, source"):
        loaders.make_dataset(table, images_dir, "binary", image_size=(64, 320), batch_size=4, augmentation="heavy")


def _warped(vectors, image, interpolation="BILINEAR"):
    return loaders._warp(tf.constant(image[None], tf.float32), tf.constant(vectors, tf.float32), interpolation)[0].numpy()


def test_the_source_transforms_are_exact_where_they_should_be():
    """The transform matrices (output pixel -> input pixel about the centre): the identity, flips and whole-pixel
    shifts move pixels exactly; a shift fills the edge with the nearest pixel."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 320, 3)).astype(np.float32)
    eye = np.eye(3, dtype=np.float32)[None]

    def vectors(matrix):
        return loaders._warp_vectors(tf.constant(matrix, tf.float32), 64, 320)

    assert np.array_equal(_warped(vectors(eye), image), image)
    assert np.array_equal(_warped(vectors(np.diag([1.0, -1.0, 1.0])[None]), image), image[:, ::-1])
    assert np.array_equal(_warped(vectors(np.diag([-1.0, 1.0, 1.0])[None]), image), image[::-1])
    shift = np.array([[[1, 0, 3], [0, 1, -5], [0, 0, 1]]], np.float32)  # read from 3 rows down, 5 columns left
    moved = _warped(vectors(shift), image, "NEAREST")
    assert np.array_equal(moved[:61, 5:], image[3:, :315])
    assert np.array_equal(moved[:61, :5], np.repeat(image[3:, :1], 5, axis=1))  # the edge: nearest pixel


def test_the_source_augmentation_is_seeded_per_batch_new_each_epoch_and_parallel(tmp_path):
    """Each batch's transforms come from its own seed (stateless), so the map runs in parallel and still gives the
    same batches for the same seed; a second epoch draws new transforms; another seed gives other batches."""
    table, images_dir, _ = _square_table(tmp_path, n=24)

    def dataset(seed):
        return loaders.make_dataset(table, images_dir, "binary", image_size=(64, 320), batch_size=4, augment=True,
                                    augmentation="source", mask_shape=(64, 320), seed=seed)

    first = dataset(5)
    epoch_1, epoch_2 = _all(first)[0], _all(first)[0]
    assert np.array_equal(_all(dataset(5))[0], epoch_1)
    assert not np.array_equal(epoch_2, epoch_1) and not np.array_equal(_all(dataset(6))[0], epoch_1)
    # the same batch, augmented alone by the function the dataset maps, is the dataset's batch
    augment = loaders.source_augmentation(segmentation=False)
    plain = _all(loaders.make_dataset(table, images_dir, "binary", image_size=(64, 320), batch_size=4,
                                      mask_shape=(64, 320)))[0]
    batch_seeds = list(tf.data.Dataset.random(seed=5, rerandomize_each_iteration=True).take(6).as_numpy_iterator())
    alone = augment(tf.constant(batch_seeds[2], tf.int64), tf.constant(plain[8:12]), tf.ones((4, 1)))[0].numpy()
    assert np.array_equal(alone, epoch_1[8:12])


def test_training_and_prediction_decode_real_jpegs_identically(real_dir):
    """The loader (tf.io.decode_jpeg, accurate DCT) and the cascade (cv2.imdecode) give the same pixels."""
    from steeldefect import cascade

    table = data.load_table(real_dir)
    images, _ = _all(loaders.make_dataset(table, real_dir / "train_images", "binary", image_size=(256, 1600),
                                          batch_size=8))
    for x, image_id in zip(images, table["ImageId"], strict=True):
        assert np.array_equal(x, cascade.read_image(real_dir / "train_images" / image_id)), image_id


def test_a_datasets_memory_grows_with_its_annotations_not_with_the_longest_one():
    """One image with a long RLE among many: the table's strings are kept as long as each is (a fixed-width NumPy
    array would take rows x 4 x the longest x 4 bytes, 1 GB here)."""
    import tracemalloc

    import pandas as pd

    n_rows = 400
    long = " ".join(f"{1 + 4 * i} 2" for i in range(20000))  # 20,000 runs: 157,221 characters
    table = pd.DataFrame({"ImageId": [f"{i}.jpg" for i in range(n_rows)], "Defect_1": [""] * n_rows,
                          "Defect_2": [""] * n_rows, "Defect_3": [long] + ["1 5"] * (n_rows - 1),
                          "Defect_4": [""] * n_rows})
    table["has_defect"] = True
    tracemalloc.start()
    try:
        loaders.make_dataset(table, "images", "masks", image_size=(64, 320), batch_size=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(long) > 150_000 and peak < 50 * 2**20, peak
