"""Each configs/dataset/*.yaml, composed as train.py does, loads its fixture from
paths.data_dir without touching the data files."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import fixtures
from metalearn.data.base import FewShotDataset
from metalearn.data.episodes import EpisodeSampler

CONFIGS = str(Path(__file__).resolve().parents[2] / "metalearn" / "configs")
pytestmark = pytest.mark.usefixtures("private_cache")

CASES = {  # config name -> (fixture writer, extra overrides, image shape)
    "miniimagenet": (fixtures.make_miniimagenet, [], (3, 84, 84)),
    "tieredimagenet": (fixtures.make_tieredimagenet, [], (3, 84, 84)),
    "cifarfs": (fixtures.make_cifarfs, ["dataset.download=false"], (3, 32, 32)),
    "fc100": (fixtures.make_fc100, ["dataset.download=false"], (3, 32, 32)),
    "cub": (fixtures.make_cub, [], (3, 84, 84)),
    "imagefolder": (fixtures.make_imagefolder, [], (3, 84, 84)),
    "huggingface": (fixtures.make_huggingface, [], (3, 84, 84)),
    # the default image folder beside a synthetic source instead of Omniglot (real data)
    "multisource": (fixtures.make_imagefolder, ["~dataset@dataset.sources.omniglot",
                                                "+dataset@dataset.sources.synthetic=synthetic"],
                    (1, 28, 28)),
}
# Configs that read no files of their own, tested with their loaders
ELSEWHERE = {"omniglot": "tests/data/test_omniglot.py (the real data, from ../shared)",
             "synthetic": "every engine test", "synthetic_domains": "tests/online",
             "digits": "tests/data/test_digits.py (scikit-learn's own copy)"}


def test_every_shipped_dataset_config_is_tested():
    """A new configs/dataset/*.yaml fails here until CASES has a fixture for it."""
    shipped = {p.stem for p in Path(CONFIGS, "dataset").glob("*.yaml")}
    assert shipped - set(ELSEWHERE) == set(CASES), (
        f"dataset configs without a fixture in CASES: {sorted(shipped - set(ELSEWHERE) - set(CASES))}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_loads_default_fixture_into_5way_5shot_15query_tasks(tmp_path, name):
    make, overrides, shape = CASES[name]
    make(tmp_path)
    before = snapshot(tmp_path)
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={name}", f"paths.data_dir={tmp_path}",
                                          *overrides])
    ds = instantiate(cfg.dataset)
    assert isinstance(ds, FewShotDataset) and ds.image_shape == shape
    for split in ds.splits().values():
        episodes = EpisodeSampler(split, 5, 5, 15, ds.mean, ds.std).sample(2)
        assert episodes.support_x.shape == (2, 25, *shape)
        assert episodes.query_x.shape == (2, 75, *shape)
    assert snapshot(tmp_path) == before, "loading changed, added or removed files in the data"


def snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_runs_two_iterations_on_each_fixture(tmp_path, monkeypatch, name):
    from metalearn.engine.loop import train
    from tests.models.test_backbones import trained_parameters

    make, overrides, shape = CASES[name]
    make(tmp_path / "data")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=[
            f"dataset={name}", f"paths.data_dir={tmp_path / 'data'}", *overrides,
            "algo.inner_lr=0.01", "logger=none", "device=cpu", "trainer.iterations=2",
            "trainer.meta_batch_size=2", "trainer.eval_every=2", "trainer.val_episodes=2",
            "trainer.test_episodes=4", "task.shots=1", "task.query=2",
            "algo.test_adaptation_steps=1"])
    drawn = []  # (split, support shape, query shape) of every meta-batch the run draws
    sample = EpisodeSampler.sample

    def spy(self, batch_size):
        episodes = sample(self, batch_size)
        drawn.append((self.split.name, episodes.support_x.shape, episodes.query_x.shape))
        return episodes
    monkeypatch.setattr(EpisodeSampler, "sample", spy)
    results = train(cfg, tmp_path / "run")
    assert results["iterations"] == 2 and 0 <= results["test_acc"] <= 1
    assert [d for d in drawn if d[0] == "train"] == [("train", (2, 5, *shape), (2, 10, *shape))] * 2
    assert {d[0].split()[-1] for d in drawn} == {"train", "val", "test"}  # multisource: "<source> val"
    assert all(d[1][1:] == (5, *shape) and d[2][1:] == (10, *shape) for d in drawn)
    assert trained_parameters(cfg, tmp_path / "run"), "two meta-steps changed no weight"
