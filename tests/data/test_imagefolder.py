import pytest
import torch

import metalearn.data.readers as readers
from fixtures import assert_images_match_classes, make_imagefolder
from metalearn.data.episodes import EpisodeSampler
from metalearn.data.imagefolder import load_imagefolder
from metalearn.data.readers import channel_stats
from metalearn.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("private_cache")


def names(ds):
    return {s: set(split.class_names) for s, split in ds.splits().items()}


def test_ratio_split_sizes_disjoint_and_seeded(tmp_path):
    root = make_imagefolder(tmp_path, classes=10, images_per_class=3)
    ds = load_imagefolder(root, image_size=24)
    assert [ds.splits()[s].num_classes for s in ("train", "val", "test")] == [6, 2, 2]
    n = names(ds)
    assert not (n["train"] & n["val"] or n["train"] & n["test"] or n["val"] & n["test"])
    assert len(n["train"] | n["val"] | n["test"]) == 10
    assert ds.image_shape == (3, 24, 24) and ds.train.images.dtype == torch.uint8
    assert ds.train.counts.tolist() == [3] * 6  # notes.txt in class_00 is not an image
    for split in ds.splits().values():
        assert_images_match_classes(split)
    assert names(load_imagefolder(root, image_size=24)) == n
    assert names(load_imagefolder(root, image_size=24, split_seed=1)) != n


def test_mean_std_computed_from_train_unless_given(tmp_path):
    root = make_imagefolder(tmp_path, classes=5, images_per_class=2)
    ds = load_imagefolder(root, image_size=16)
    expected = channel_stats(ds.train.images)
    assert ds.mean == pytest.approx(expected[0]) and ds.std == pytest.approx(expected[1])
    assert ds.mean[2] == pytest.approx(128 / 255, abs=2 / 255)  # the fixture's blue level
    given = load_imagefolder(root, image_size=16, mean=[0.485, 0.456, 0.406],
                             std=[0.229, 0.224, 0.225])
    assert given.mean == (0.485, 0.456, 0.406)


def test_grayscale(tmp_path):
    ds = load_imagefolder(make_imagefolder(tmp_path, classes=5, images_per_class=2),
                          image_size=20, channels=1)
    assert ds.image_shape == (1, 20, 20) and len(ds.mean) == len(ds.std) == 1


def test_split_files_choose_classes(tmp_path):
    root = make_imagefolder(tmp_path, classes=8, images_per_class=2)
    (root / "train.txt").write_text("class_00\nclass_01\n# a comment\n\nclass_02\n")
    (root / "val.txt").write_text("class_03  # trailing comment\nclass_04\n")
    (root / "test.txt").write_text("class_07\nclass_06\n")
    ds = load_imagefolder(root, image_size=16)
    assert ds.train.class_names == ["class_00", "class_01", "class_02"]
    assert ds.val.class_names == ["class_03", "class_04"]
    assert ds.test.class_names == ["class_07", "class_06"]
    assert_images_match_classes(ds.test)


def test_changing_the_split_does_not_decode_again(tmp_path, private_cache, monkeypatch):
    root = make_imagefolder(tmp_path, classes=6, images_per_class=2)
    load_imagefolder(root, image_size=16)
    monkeypatch.setattr(readers, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    load_imagefolder(root, image_size=16, split_seed=3, split_ratios=(0.5, 0.25, 0.25))
    assert len(list(private_cache.glob("imagefolder-*.pt"))) == 1


def test_split_file_naming_unknown_class(tmp_path):
    root = make_imagefolder(tmp_path, classes=4, images_per_class=1)
    (root / "train.txt").write_text("class_00\nclass_99\n")
    (root / "val.txt").write_text("class_01\n")
    (root / "test.txt").write_text("class_02\n")
    with pytest.raises(DataError, match=r"train\.txt lists 1 classes with no folder .*'class_99'"):
        load_imagefolder(root, image_size=8)


def test_empty_split_file(tmp_path):
    root = make_imagefolder(tmp_path, classes=4, images_per_class=1)
    (root / "train.txt").write_text("class_00\n")
    (root / "val.txt").write_text("# nothing yet\n")
    (root / "test.txt").write_text("class_02\n")
    with pytest.raises(DataError, match=r"val\.txt lists no classes, so the val split"):
        load_imagefolder(root, image_size=8)


def test_split_files_need_all_three(tmp_path):
    root = make_imagefolder(tmp_path, classes=4, images_per_class=1)
    (root / "train.txt").write_text("class_00\n")
    with pytest.raises(DataError, match=r"val\.txt is missing"):
        load_imagefolder(root, image_size=8)


def test_class_in_two_split_files(tmp_path):
    root = make_imagefolder(tmp_path, classes=4, images_per_class=1)
    (root / "train.txt").write_text("class_00\nclass_01\n")
    (root / "val.txt").write_text("class_01\n")
    (root / "test.txt").write_text("class_02\n")
    with pytest.raises(DataError, match=r"'class_01' is in both the train and the val split"):
        load_imagefolder(root, image_size=8)


def test_too_few_classes_for_three_splits(tmp_path):
    with pytest.raises(DataError, match=r"has 2 classes, which split .* into \[\d, \d, \d\]"):
        load_imagefolder(make_imagefolder(tmp_path, classes=2, images_per_class=1), image_size=8)


def test_bad_ratios_and_channels_are_config_errors(tmp_path):
    root = make_imagefolder(tmp_path, classes=5, images_per_class=1)
    with pytest.raises(ConfigError, match="add up to 1"):
        load_imagefolder(root, image_size=8, split_ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="dataset.channels=4"):
        load_imagefolder(root, channels=4)


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope does not exist.*<class name>/<image>"
                                        r".*set dataset.path="):
        load_imagefolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty has no class folders"):
        load_imagefolder(tmp_path / "empty")


def test_empty_class_folder_is_named(tmp_path):
    root = make_imagefolder(tmp_path, classes=4, images_per_class=1)
    (root / "class_09").mkdir()
    with pytest.raises(DataError, match=r"class_09 holds no images"):
        load_imagefolder(root, image_size=8)


def test_html_saved_as_jpeg_and_broken_png(tmp_path):
    root = make_imagefolder(tmp_path, classes=4, images_per_class=2)
    (root / "class_02" / "img000.jpg").write_text("<!DOCTYPE html><html>Forbidden</html>")
    with pytest.raises(DataError, match=r"img000\.jpg is an HTML page, not an image"):
        load_imagefolder(root, image_size=8)
    (root / "class_02" / "img000.jpg").unlink()
    (root / "class_03" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    with pytest.raises(DataError, match=r"cannot read image .*class_03/img001\.png"):
        load_imagefolder(root, image_size=8)


def test_class_too_small_for_the_task_reaches_the_sampler_check(tmp_path):
    root = make_imagefolder(tmp_path, classes=4, images_per_class=4)
    for f in sorted((root / "class_01").glob("img*"))[1:]:
        f.unlink()
    (root / "train.txt").write_text("class_00\nclass_01\n")
    (root / "val.txt").write_text("class_02\n")
    (root / "test.txt").write_text("class_03\n")
    ds = load_imagefolder(root, image_size=8)
    assert ds.train.counts.tolist() == [4, 1]
    with pytest.raises(ConfigError, match=r"class 'class_01' of the train split has only 1"):
        EpisodeSampler(ds.train, ways=2, shots=1, query=1, mean=ds.mean, std=ds.std)
