"""Lake et al.'s background/evaluation split of Omniglot (dataset.split=lake)."""
import pytest

from metalearn.data.omniglot import load_omniglot
from metalearn.errors import DataError
from tests.conftest import DATA_DIR, needs_omniglot


def alphabets(split):
    return {c.split("/", 1)[0] for c in split.class_names}


@needs_omniglot
def test_lake_split_trains_on_background_and_tests_on_evaluation_alphabets():
    data = load_omniglot(DATA_DIR, download=False, split="lake", val_alphabets=5)
    background = {p.name for p in (DATA_DIR / "omniglot-py" / "images_background").iterdir()}
    evaluation = {p.name for p in (DATA_DIR / "omniglot-py" / "images_evaluation").iterdir()}
    train, val, test = (alphabets(s) for s in (data.train, data.val, data.test))
    assert test == evaluation and len(test) == 20
    assert train | val == background and len(val) == 5 and not train & val
    # 964 background and 659 evaluation characters, x4 rotations
    assert data.test.num_classes == 659 * 4
    assert data.train.num_classes + data.val.num_classes == 964 * 4
    again = load_omniglot(DATA_DIR, download=False, split="lake", val_alphabets=5, split_seed=1)
    assert alphabets(again.val) != val  # the seed picks the validation alphabets
    assert alphabets(again.test) == test


@needs_omniglot
@pytest.mark.parametrize("kw", [{"split": "vinyals"}, {"split": "lake", "val_alphabets": 30}])
def test_bad_split_options_are_one_clear_error(kw):
    with pytest.raises(DataError, match="dataset.(split|val_alphabets)"):
        load_omniglot(DATA_DIR, download=False, **kw)
