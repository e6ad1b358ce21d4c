import ast
import importlib.util
from pathlib import Path

import pytest
import torch

import metalearn.data.readers as readers
from fixtures import CUB_SPECIES, assert_images_match_classes, make_cub
from metalearn.data.cub import SPLIT_RULES, load_cub
from metalearn.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("private_cache")


def numbers(split):
    return [int(n[:3]) for n in split.class_names]


def test_closer_look_split_is_100_50_50_by_species_number():
    rule = SPLIT_RULES["closer_look"]
    assigned = [rule(n) for n in range(1, 201)]
    assert [assigned.count(s) for s in ("train", "val", "test")] == [100, 50, 50]
    assert assigned[:8] == ["train", "val", "train", "test"] * 2


def _learn2learn_cub_splits():
    # Read from the source: importing learn2learn takes seconds.
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("learn2learn is not installed")
    source = Path(spec.submodule_search_locations[0], "vision", "datasets", "cu_birds200.py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "SPLITS":
            return ast.literal_eval(node.value)
    pytest.fail(f"no SPLITS in {source}")


def test_meta_dataset_split_matches_learn2learn():
    splits = _learn2learn_cub_splits()
    rule = SPLIT_RULES["meta_dataset"]
    for l2l_name, ours in (("train", "train"), ("validation", "val"), ("test", "test")):
        assert {rule(int(c[:3])) for c in splits[l2l_name]} == {ours}
    assert sum(len(v) for v in splits.values()) == 200


@pytest.mark.parametrize("split", ["closer_look", "meta_dataset"])
def test_loads_and_splits_by_species(tmp_path, split):
    ds = load_cub(make_cub(tmp_path, images_per_class=3), split=split)
    assert ds.name == "cub" and ds.image_shape == (3, 84, 84)
    rule = SPLIT_RULES[split]
    found = []
    for name, s in ds.splits().items():
        assert s.images.dtype == torch.uint8 and s.counts.tolist() == [3] * s.num_classes
        assert s.num_classes >= 5 and all(rule(n) == name for n in numbers(s))
        assert_images_match_classes(s)
        found += numbers(s)
    assert sorted(found) == sorted(CUB_SPECIES)


def test_switching_split_reuses_the_decoded_images(tmp_path, monkeypatch):
    root = make_cub(tmp_path, images_per_class=2)
    load_cub(root)
    monkeypatch.setattr(readers, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    assert load_cub(root, split="meta_dataset").val.num_classes == 5


def test_learn2learn_location_is_found(tmp_path):
    make_cub(tmp_path / "cubirds200", images_per_class=2)
    assert load_cub(tmp_path).test.num_classes >= 5


def test_missing_dataset_names_layout_and_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"CUB-200-2011 not found.*CUB_200_2011/images/"
                                        r"<NNN\.Species_Name>.*METALEARN_DATA_DIR"):
        load_cub(tmp_path)


def test_foreign_folder_is_named(tmp_path):
    root = make_cub(tmp_path, images_per_class=2)
    (root / "CUB_200_2011" / "images" / "my_birds").mkdir()
    with pytest.raises(DataError, match=r"unexpected folder .*my_birds: CUB class folders"):
        load_cub(root)


def test_empty_class_folder_is_named(tmp_path):
    root = make_cub(tmp_path, images_per_class=2)
    for f in (root / "CUB_200_2011" / "images" / "004.Groove_billed_Ani").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"004\.Groove_billed_Ani holds no images"):
        load_cub(root)


def test_split_left_empty_by_missing_folders(tmp_path):
    root = make_cub(tmp_path, images_per_class=2)
    images = root / "CUB_200_2011" / "images"
    for folder in images.iterdir():
        if int(folder.name[:3]) % 4 == 0:  # every closer_look test class
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
    with pytest.raises(DataError, match=r"belongs to the test split \(200 are expected\)"):
        load_cub(root)


def test_unreadable_jpeg_is_named(tmp_path):
    root = make_cub(tmp_path, images_per_class=2)
    bad = root / "CUB_200_2011" / "images" / "002.Laysan_Albatross" / "Laysan_Albatross_0001.jpg"
    bad.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataError, match=r"cannot read image .*Laysan_Albatross_0001\.jpg"):
        load_cub(root)


def test_unknown_split_name(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.split='chen'.*closer_look"):
        load_cub(make_cub(tmp_path, images_per_class=1), split="chen")
