import pickle

import numpy as np
import pytest
import torch

import metalearn.data.readers as readers
from fixtures import assert_images_match_classes, make_tieredimagenet
from metalearn.data.tieredimagenet import load_tieredimagenet
from metalearn.errors import DataError

pytestmark = pytest.mark.usefixtures("private_cache")


def _rewrite(path, change):
    with open(path, "rb") as f:
        obj = pickle.load(f)
    with open(path, "wb") as f:
        pickle.dump(change(obj), f, protocol=2)


@pytest.mark.parametrize("blob_type", ["ndarray", "bytes"])
def test_loads_png_pickles_grouped_by_class(tmp_path, blob_type):
    root = make_tieredimagenet(tmp_path, classes_per_split=4, images_per_class=6,
                               blob_type=blob_type)
    ds = load_tieredimagenet(root)
    assert ds.name == "tieredimagenet" and ds.image_shape == (3, 84, 84)
    for name, split in ds.splits().items():
        assert split.images.dtype == torch.uint8
        assert split.counts.tolist() == [6] * 4
        # Names come from label_specific_str; the fixture's labels are shuffled.
        assert split.class_names == [f"n{ {'train': 1000, 'val': 2000, 'test': 3000}[name] + c:08d}"
                                     for c in range(4)]
        assert_images_match_classes(split, tolerance=0)
    assert not set(ds.train.class_names) & set(ds.test.class_names)


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    root = make_tieredimagenet(tmp_path, 2, 3)
    first = load_tieredimagenet(root)
    monkeypatch.setattr(readers, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    assert torch.equal(load_tieredimagenet(root).val.images, first.val.images)


def test_without_label_names_classes_get_numbered(tmp_path):
    root = make_tieredimagenet(tmp_path, 3, 2)
    _rewrite(root / "val_labels.pkl", lambda d: {"label_specific": d["label_specific"]})
    assert load_tieredimagenet(root).val.class_names == ["val000", "val001", "val002"]


def test_missing_files_are_listed(tmp_path):
    root = make_tieredimagenet(tmp_path, 2, 2)
    (root / "test_labels.pkl").unlink()
    with pytest.raises(DataError, match=r"missing from .*test_labels\.pkl.*renmengye"):
        load_tieredimagenet(root)


def test_missing_folder_names_layout_and_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"tiered-ImageNet not found.*_images_png\.pkl.*"
                                        r"METALEARN_DATA_DIR"):
        load_tieredimagenet(tmp_path / "tiered-imagenet")


def test_html_page_instead_of_pickle(tmp_path):
    root = make_tieredimagenet(tmp_path, 2, 2)
    (root / "train_images_png.pkl").write_text("<html><head><title>Sign in</title></head></html>")
    with pytest.raises(DataError, match=r"train_images_png\.pkl is an HTML page, not a pickle"):
        load_tieredimagenet(root)


def test_truncated_pickle(tmp_path):
    root = make_tieredimagenet(tmp_path, 2, 2)
    path = root / "val_images_png.pkl"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"val_images_png\.pkl is truncated or corrupt"):
        load_tieredimagenet(root)


def test_corrupt_png_is_named_by_index(tmp_path):
    root = make_tieredimagenet(tmp_path, 2, 3)
    _rewrite(root / "test_images_png.pkl", lambda blobs: blobs[:4] + [blobs[4][:30]] + blobs[5:])
    with pytest.raises(DataError, match=r"cannot read image image #4 of .*test_images_png\.pkl"):
        load_tieredimagenet(root)


def test_labels_and_images_from_different_downloads(tmp_path):
    root = make_tieredimagenet(tmp_path, 2, 3)
    _rewrite(root / "train_images_png.pkl", lambda blobs: blobs[:-1])
    with pytest.raises(DataError, match=r"holds 5 images but train_labels\.pkl labels 6"):
        load_tieredimagenet(root)


def test_empty_split(tmp_path):
    root = make_tieredimagenet(tmp_path, 2, 2)
    _rewrite(root / "val_images_png.pkl", lambda blobs: [])
    _rewrite(root / "val_labels.pkl", lambda d: {**d, "label_specific": np.zeros(0, np.int64)})
    with pytest.raises(DataError, match=r"hold no images, so the val split would be empty"):
        load_tieredimagenet(root)
