import pickle

import pytest
import torch

import metalearn.data.cifar as cifar
from fixtures import assert_images_match_classes, make_cifar100, make_cifarfs, make_fc100
from metalearn.data.cifar import (CIFAR100_FINE, CIFAR100_HIERARCHY, CIFARFS_SPLIT, FC100_SPLIT,
                                  load_cifarfs, load_fc100)
from metalearn.errors import DataError

pytestmark = pytest.mark.usefixtures("private_cache")
SPLITS = ("train", "val", "test")


def test_builtin_splits_partition_cifar100():
    for split, sizes in ((CIFARFS_SPLIT, [64, 16, 20]), (FC100_SPLIT, [60, 20, 20])):
        assert [len(split[s]) for s in SPLITS] == sizes
        assert sorted(c for s in SPLITS for c in split[s]) == CIFAR100_FINE
    assert len(CIFAR100_FINE) == 100 and len(CIFAR100_HIERARCHY) == 20


def test_fc100_test_classes_share_no_superclass_with_training():
    coarse = {f: c for c, fs in CIFAR100_HIERARCHY.items() for f in fs}
    train = {coarse[c] for c in FC100_SPLIT["train"]}
    assert len(train) == 12
    assert not train & {coarse[c] for c in FC100_SPLIT["val"] + FC100_SPLIT["test"]}


def check(ds, split_lists, per_class):
    assert ds.image_shape == (3, 32, 32)
    for s in SPLITS:
        split = ds.splits()[s]
        assert split.class_names == split_lists[s]
        assert split.images.dtype == torch.uint8
        assert split.counts.tolist() == [per_class] * len(split_lists[s])
        assert_images_match_classes(split, tolerance=0)


def test_cifarfs_from_cifar100_python(tmp_path):
    ds = load_cifarfs(make_cifarfs(tmp_path, images_per_class=3), download=False)
    assert ds.name == "cifarfs"
    check(ds, CIFARFS_SPLIT, 3)


def test_fc100_from_cifar100_python_shares_the_decoded_cache(tmp_path, private_cache,
                                                             monkeypatch):
    root = make_fc100(tmp_path, images_per_class=3)
    load_cifarfs(root, download=False)
    monkeypatch.setattr(cifar, "load_pickle", lambda *a: pytest.fail("read CIFAR-100 again"))
    ds = load_fc100(root, download=False)
    assert ds.name == "fc100"
    check(ds, FC100_SPLIT, 3)
    assert len(list(private_cache.glob("cifar100-*.pt"))) == 1


def test_root_may_be_the_cifar100_python_folder_itself(tmp_path):
    root = make_cifarfs(tmp_path, images_per_class=2)
    assert load_cifarfs(root / "cifar-100-python", download=False).val.num_classes == 16


def test_cifarfs_from_learn2learn_class_folders(tmp_path):
    root = make_cifar100(tmp_path, images_per_class=2, layout="cifarfs_folders")
    check(load_cifarfs(root, download=False), CIFARFS_SPLIT, 2)


def test_fc100_from_metaoptnet_pickles(tmp_path):
    root = make_cifar100(tmp_path, images_per_class=2, layout="fc100_pickles")
    ds = load_fc100(root, download=False)
    assert {s: ds.splits()[s].num_classes for s in SPLITS} == {"train": 60, "val": 20, "test": 20}
    for s in SPLITS:
        assert sorted(ds.splits()[s].class_names) == sorted(FC100_SPLIT[s])
        assert_images_match_classes(ds.splits()[s], tolerance=0)


def test_image_size_upsamples(tmp_path):
    ds = load_fc100(make_fc100(tmp_path, images_per_class=2), image_size=40, download=False)
    assert ds.image_shape == (3, 40, 40)


def test_missing_without_download_names_layouts_and_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-FS not found: expected .*cifar-100-python/"
                                        r"\{train,test,meta\}.*cifarfs/cifar100/data.*"
                                        r"METALEARN_DATA_DIR"):
        load_cifarfs(tmp_path, download=False)
    with pytest.raises(DataError, match=r"FC100 not found.*FC100_\{train,val,test\}\.pickle"):
        load_fc100(tmp_path, download=False)



def test_html_page_instead_of_meta(tmp_path):
    root = make_cifarfs(tmp_path, images_per_class=2)
    (root / "cifar-100-python" / "meta").write_text("<!doctype html><html>Dropbox</html>")
    with pytest.raises(DataError, match=r"meta is an HTML page, not a pickle.*toronto"):
        load_cifarfs(root, download=False)


def test_truncated_train_pickle(tmp_path):
    root = make_cifarfs(tmp_path, images_per_class=2)
    path = root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"train is truncated or corrupt"):
        load_fc100(root, download=False)


def test_missing_test_part(tmp_path):
    root = make_cifarfs(tmp_path, images_per_class=2)
    (root / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match=r"lacks test: expected .*cifar-100-python"):
        load_cifarfs(root, download=False)


def test_incomplete_class_set_is_refused(tmp_path):
    root = make_cifarfs(tmp_path, images_per_class=2)
    meta = root / "cifar-100-python" / "meta"
    with open(meta, "rb") as f:
        blob = pickle.load(f)
    blob["fine_label_names"] = ["x" + n for n in blob["fine_label_names"]]
    with open(meta, "wb") as f:
        pickle.dump(blob, f)
    with pytest.raises(DataError, match=r"cifarfs: the data has no class 'train' \(100 of"):
        load_cifarfs(root, download=False)


def test_unreadable_png_in_learn2learn_layout(tmp_path):
    root = make_cifar100(tmp_path, images_per_class=2, layout="cifarfs_folders")
    bad = root / "cifarfs" / "cifar100" / "data" / "otter" / "otter_s_000001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"cannot read image .*otter_s_000001\.png"):
        load_cifarfs(root, download=False)


def test_one_fc100_pickle_missing(tmp_path):
    root = make_cifar100(tmp_path, images_per_class=2, layout="fc100_pickles")
    (root / "FC100_val.pickle").unlink()
    with pytest.raises(DataError, match=r"FC100_val\.pickle missing"):
        load_fc100(root, download=False)
