import csv
import pickle

import numpy as np
import pytest
import torch

import metalearn.data.readers as readers
from fixtures import assert_images_match_classes, make_miniimagenet
from metalearn.data.miniimagenet import load_miniimagenet
from metalearn.errors import DataError

pytestmark = pytest.mark.usefixtures("private_cache")


def check(ds, classes=5, per_class=8):
    assert ds.name == "miniimagenet" and ds.image_shape == (3, 84, 84) and len(ds.mean) == 3
    names = [set(s.class_names) for s in ds.splits().values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for split in ds.splits().values():
        assert split.images.dtype == torch.uint8
        assert split.num_classes == classes and split.counts.tolist() == [per_class] * classes
        assert split.class_names == sorted(split.class_names)
        assert_images_match_classes(split)


@pytest.mark.parametrize("layout", ["pickle", "csv"])
def test_loads_either_layout_by_auto_detection(tmp_path, layout):
    root = make_miniimagenet(tmp_path, layout, classes_per_split=5, images_per_class=8)
    check(load_miniimagenet(root))


def test_both_layouts_give_the_same_classes_in_the_same_order(tmp_path):
    a = load_miniimagenet(make_miniimagenet(tmp_path / "a", "pickle", 3, 4))
    b = load_miniimagenet(make_miniimagenet(tmp_path / "b", "csv", 3, 4))
    for s in ("train", "val", "test"):
        assert a.splits()[s].class_names == b.splits()[s].class_names


def test_csv_layout_is_decoded_once_then_cached(tmp_path, private_cache, monkeypatch):
    root = make_miniimagenet(tmp_path, "csv", 2, 4)
    first = load_miniimagenet(root)
    assert len(list(private_cache.glob("miniimagenet-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache was there")

    monkeypatch.setattr(readers, "decode_image", no_decoding)
    second = load_miniimagenet(root)
    assert torch.equal(first.train.images, second.train.images)
    assert second.test.class_names == first.test.class_names
    # A different size is a different cache entry, so it must decode (and here fail).
    with pytest.raises(DataError, match="cannot read image"):
        load_miniimagenet(root, image_size=42)


def test_pickle_image_size_resizes(tmp_path):
    ds = load_miniimagenet(make_miniimagenet(tmp_path, "pickle", 2, 3), image_size=32)
    assert ds.image_shape == (3, 32, 32)
    assert_images_match_classes(ds.val)


def test_missing_folder_names_layout_and_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"mini-ImageNet not found.*mini-imagenet-cache-"
                                        r"\{train,validation,test\}\.pkl.*METALEARN_DATA_DIR"):
        load_miniimagenet(tmp_path / "nothing-here")


def test_empty_folder_says_what_to_put_there(tmp_path):
    with pytest.raises(DataError, match=r"no mini-ImageNet files in .*zenodo.*paths\.data_dir"):
        load_miniimagenet(tmp_path)


def test_html_page_instead_of_pickle(tmp_path):
    root = make_miniimagenet(tmp_path, "pickle", 2, 3)
    (root / "mini-imagenet-cache-test.pkl").write_text(
        "<!DOCTYPE html><html><body>Google Drive can't scan this file for viruses</body></html>")
    with pytest.raises(DataError, match=r"mini-imagenet-cache-test\.pkl is an HTML page, not a "
                                        r"pickle.*download it again from https://zenodo"):
        load_miniimagenet(root)


def test_truncated_pickle(tmp_path):
    root = make_miniimagenet(tmp_path, "pickle", 2, 3)
    path = root / "mini-imagenet-cache-train.pkl"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cache-train\.pkl is truncated or corrupt"):
        load_miniimagenet(root)


def test_one_pickle_missing(tmp_path):
    root = make_miniimagenet(tmp_path, "pickle", 2, 3)
    (root / "mini-imagenet-cache-validation.pkl").unlink()
    with pytest.raises(DataError, match=r"mini-imagenet-cache-validation\.pkl missing"):
        load_miniimagenet(root)


def test_pickle_with_no_classes_is_an_empty_split(tmp_path):
    root = make_miniimagenet(tmp_path, "pickle", 2, 3)
    with open(root / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((0, 84, 84, 3), np.uint8), "class_dict": {}}, f)
    with pytest.raises(DataError, match=r"holds no classes or no images \(the test split is "
                                        r"empty\)"):
        load_miniimagenet(root)


def test_missing_csv(tmp_path):
    root = make_miniimagenet(tmp_path, "csv", 2, 3)
    (root / "val.csv").unlink()
    with pytest.raises(DataError, match=r"val\.csv is missing.*header filename,label"):
        load_miniimagenet(root)


def test_csv_with_no_rows_is_an_empty_split(tmp_path):
    root = make_miniimagenet(tmp_path, "csv", 2, 3)
    (root / "test.csv").write_text("filename,label\n")
    with pytest.raises(DataError, match=r"test\.csv lists no images"):
        load_miniimagenet(root)


def test_csv_listing_absent_images(tmp_path):
    root = make_miniimagenet(tmp_path, "csv", 2, 3)
    with open(root / "train.csv", "a", newline="") as f:
        csv.writer(f).writerow(["n0999999900000001.jpg", "n09999999"])
    with pytest.raises(DataError, match=r"train\.csv lists 1 images that are not in .*"
                                        r"n0999999900000001\.jpg"):
        load_miniimagenet(root)


def test_unreadable_jpeg_is_named(tmp_path):
    root = make_miniimagenet(tmp_path, "csv", 2, 3)
    victim = sorted((root / "images").glob("*.jpg"))[4]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"cannot read image .*{victim.name}"):
        load_miniimagenet(root)


def test_class_in_two_splits_is_refused(tmp_path):
    root = make_miniimagenet(tmp_path, "csv", 2, 3)
    train_rows = (root / "train.csv").read_text().splitlines()[1:]
    with open(root / "val.csv", "a") as f:
        f.write(train_rows[0] + "\n")
    with pytest.raises(DataError, match=r"is in both the train and the val split"):
        load_miniimagenet(root)


def test_loading_leaves_user_files_untouched(tmp_path):
    root = make_miniimagenet(tmp_path, "csv", 2, 3)
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}
    load_miniimagenet(root)
    load_miniimagenet(root)
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")} == before
