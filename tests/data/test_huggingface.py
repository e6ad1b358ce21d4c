"""dataset=huggingface on datasets built here with `datasets` itself; no network."""
import pytest

import fixtures
from metalearn.data import huggingface
from metalearn.data.episodes import EpisodeSampler
from metalearn.data.huggingface import load_huggingface
from metalearn.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty Hugging Face cache


def _classes(ds):
    return {s: set(split.class_names) for s, split in ds.splits().items()}


def test_save_to_disk_folder_by_seeded_ratios_decoded_once(tmp_path, monkeypatch):
    path = fixtures.make_huggingface(tmp_path, classes=10, images_per_class=6)
    ds = load_huggingface(str(path), image_size=20, split_ratios=[0.6, 0.2, 0.2], split_seed=3)
    sizes = {s: split.num_classes for s, split in ds.splits().items()}
    assert sizes == {"train": 6, "val": 2, "test": 2} and ds.image_shape == (3, 20, 20)
    for split in ds.splits().values():
        fixtures.assert_images_match_classes(split)
        assert split.counts.tolist() == [6] * split.num_classes
    assert set.union(*_classes(ds).values()) == {f"class_{c:02d}" for c in range(10)}
    monkeypatch.setattr(huggingface, "decode_images", None)  # a second load must come from the cache
    other = load_huggingface(str(path), image_size=20, split_ratios=[0.6, 0.2, 0.2], split_seed=4)
    assert _classes(other) != _classes(ds) and other.train.images.dtype == ds.train.images.dtype


def test_parquet_folder_string_labels_given_class_lists_grayscale(tmp_path):
    path = fixtures.make_huggingface(tmp_path, classes=6, images_per_class=4, layout="parquet",
                                     image_column="img")
    lists = {"train": ["class_00", "class_01", "class_02"], "val": ["class_03"],
             "test": ["class_05", "class_04"]}
    ds = load_huggingface(str(path), image_column="img", split="classes", classes=lists,
                          image_size=16, channels=1)
    assert {s: split.class_names for s, split in ds.splits().items()} == lists
    assert ds.image_shape == (1, 16, 16) and len(ds.mean) == 1
    rgb = load_huggingface(str(path), image_column="img", split="classes", classes=lists,
                           image_size=16)
    for split in rgb.splits().values():
        fixtures.assert_images_match_classes(split)
    with pytest.raises(DataError, match=r"dataset.classes.val lists 1 classes with no label .*"
                                        r"'class_99'"):
        load_huggingface(str(path), image_column="img", split="classes",
                         classes={**lists, "val": ["class_99"]})


def test_the_datasets_own_class_disjoint_splits(tmp_path):
    own = {"train": range(0, 4), "validation": range(4, 6), "test": range(6, 9)}
    path = fixtures.make_huggingface(tmp_path, classes=9, images_per_class=5, own_splits=own)
    ds = load_huggingface(str(path), split="dataset", image_size=16)
    assert {s: sorted(c) for s, c in _classes(ds).items()} == {
        s: [f"class_{c:02d}" for c in own[hf]]
        for s, hf in (("train", "train"), ("val", "validation"), ("test", "test"))}
    for split in ds.splits().values():
        fixtures.assert_images_match_classes(split)


def test_overlapping_own_splits_are_refused(tmp_path):
    own = {"train": range(0, 4), "validation": range(3, 6), "test": range(6, 9)}
    path = fixtures.make_huggingface(tmp_path, classes=9, images_per_class=2, own_splits=own)
    with pytest.raises(DataError, match=r"'train' and 'validation' splits share class 'class_03'"
                                        r".*dataset.split=ratios"):
        load_huggingface(str(path), split="dataset")


def test_errors_are_one_line_naming_the_fix(tmp_path):
    path = str(fixtures.make_huggingface(tmp_path, classes=4, images_per_class=3))
    with pytest.raises(DataError, match=r"image_column='picture'.*no such column; its columns are "
                                        r"\['image', 'label'\]"):
        load_huggingface(path, image_column="picture")
    with pytest.raises(DataError, match=r"image_column='label'.*holds ClassLabel values, not "
                                        r"images; its image columns are \['image'\]"):
        load_huggingface(path, image_column="label")
    with pytest.raises(DataError, match=r"'someone/no-such-set' is no local folder and the Hub "
                                        r"dataset is not in the local cache: run once with "
                                        r"network, or pass a local path"):
        load_huggingface("someone/no-such-set")
    with pytest.raises(DataError, match=r"has 4 classes, which split .* into \[4, 0, 0\] classes: "
                                        r"every split needs at least one"):
        load_huggingface(path, split_ratios=[0.9, 0.05, 0.05])
    ds = load_huggingface(path, split_ratios=[0.5, 0.25, 0.25], image_size=8)
    with pytest.raises(ConfigError, match=r"task.ways=5 but the train split has only 2 classes"):
        EpisodeSampler(ds.train, 5, 1, 1, ds.mean, ds.std)
    with pytest.raises(ConfigError, match=r"task.shots \+ task.query = 4 .* has only 3 images"):
        EpisodeSampler(ds.train, 2, 1, 3, ds.mean, ds.std)
    with pytest.raises(ConfigError, match=r"dataset.split='own'"):
        load_huggingface(path, split="own")


def test_a_truncated_arrow_file_is_one_line(tmp_path):
    path = fixtures.make_huggingface(tmp_path, classes=4, images_per_class=3)
    for arrow in path.rglob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(DataError, match=r"could not read it \(OSError: Expected to be able to "
                                        r"read .*\); if its files are damaged or incomplete, "
                                        r"save or copy the dataset again"):
        load_huggingface(str(path), split_ratios=[0.5, 0.25, 0.25], image_size=8)
