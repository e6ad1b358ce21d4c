import pytest
import torch

from metalearn.data.omniglot import load_omniglot
from metalearn.errors import DataError
from tests.conftest import DATA_DIR, needs_omniglot


@pytest.fixture(scope="module")
def omniglot():
    return load_omniglot(DATA_DIR, download=False)


@needs_omniglot
def test_real_omniglot_splits_sizes_and_preprocessing(omniglot):
    sizes = {n: s.num_classes for n, s in omniglot.splits().items()}
    assert sizes == {"train": 4400, "val": 400, "test": 1692}  # (1100, 100, 423) x 4 rotations
    for s in omniglot.splits().values():
        assert s.images.dtype == torch.uint8 and s.image_shape == (1, 28, 28)
        assert (s.counts == 20).all()
        # ink is 1 (255): strokes are a small fraction of each image
        assert 0.03 < s.images.float().mean().item() / 255 < 0.2


@needs_omniglot
def test_splits_share_no_character_and_rotations_are_classes(omniglot):
    chars = {n: {c.rsplit("/", 1)[0] for c in s.class_names}
             for n, s in omniglot.splits().items()}
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"]
    assert not chars["val"] & chars["test"]
    t = omniglot.train
    assert t.class_names[1].endswith("rot090")
    first = t.images[t.offsets[0] : t.offsets[0] + 20]
    rotated = t.images[t.offsets[1] : t.offsets[1] + 20]
    assert torch.equal(torch.rot90(first, 1, dims=(2, 3)), rotated)


@needs_omniglot
def test_split_seed_changes_split():
    a = load_omniglot(DATA_DIR, download=False, split_seed=0).test.class_names
    b = load_omniglot(DATA_DIR, download=False, split_seed=1).test.class_names
    assert set(a) != set(b)


def test_missing_data_names_layout_and_env_var(tmp_path):
    with pytest.raises(DataError, match="omniglot-py/images_.*METALEARN_DATA_DIR"):
        load_omniglot(tmp_path, download=False)


def test_unreadable_image_is_named(tmp_path):
    char = tmp_path / "omniglot-py" / "images_background" / "Alpha" / "character01"
    char.mkdir(parents=True)
    (tmp_path / "omniglot-py" / "images_evaluation").mkdir()
    (char / "0001_01.png").write_text("<html>not a png</html>")
    with pytest.raises(DataError, match="0001_01.png"):
        load_omniglot(tmp_path, download=False, split_sizes=(1, 0, 0))
