import pytest
import torch

from metalearn.data.base import ImageSplit
from metalearn.data.episodes import EpisodeSampler, Preprocess, random_flip
from metalearn.errors import ConfigError, DataError


def indexed_split(counts, name="train"):
    """Each image's pixels spell its own global index, so episodes can be traced back."""
    n = sum(counts)
    idx = torch.arange(n)
    images = torch.stack([idx // 256, idx % 256], 1).to(torch.uint8)[:, :, None, None]
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return ImageSplit(images, labels, [f"c{i}" for i in range(len(counts))], name)


def trace(x):
    """Back from uint8 pixels, or normalised ones (mean 0, std 1/255), to global image indices."""
    v = x[..., 0, 0].round().long()
    return v[..., 0] * 256 + v[..., 1]


def make(split, ways, shots, query, seed=0):
    return EpisodeSampler(split, ways, shots, query, mean=(0.0, 0.0), std=(1 / 255, 1 / 255),
                          seed=seed)


def test_sampler_returns_uint8_and_preprocess_normalises_to_float():
    split = indexed_split([6] * 5)
    sampler = make(split, 3, 1, 2)
    ep = sampler.sample(4)
    assert ep.support_x.dtype == torch.uint8 and ep.query_x.dtype == torch.uint8
    out = Preprocess(sampler.mean, sampler.std)(ep)
    assert out.support_x.dtype == torch.float32
    assert torch.equal(trace(out.support_x), trace(ep.support_x))
    assert torch.equal(out.query_y, ep.query_y)
    prep = Preprocess(mean=(0.5, 0.25), std=(0.2, 0.1))
    x = prep(ep).query_x
    want = (ep.query_x.double() / 255 - torch.tensor([0.5, 0.25]).view(1, 1, 2, 1, 1)) \
        / torch.tensor([0.2, 0.1]).view(1, 1, 2, 1, 1)
    assert torch.allclose(x.double(), want, atol=1e-5)


def test_flip_augmentation_only_on_training_batches():
    torch.manual_seed(0)
    x = torch.arange(2 * 8 * 1 * 2 * 3, dtype=torch.uint8).view(2, 8, 1, 2, 3)
    flipped = random_flip(x)
    same = (flipped == x).flatten(2).all(-1)
    mirrored = (flipped == x.flip(-1)).flatten(2).all(-1)
    assert (same ^ mirrored).all() and same.any() and mirrored.any()  # each image one or other
    prep = Preprocess(mean=(0.0,), std=(1 / 255,), augment="flip")
    ep = make(indexed_split([6] * 5), 3, 1, 2).sample(8)
    assert torch.equal(prep(ep).support_x, ep.support_x.float())  # evaluation: untouched
    with pytest.raises(ConfigError, match="trainer.augment='rotate'"):
        Preprocess(mean=(0.0,), std=(1.0,), augment="rotate")


def test_episode_shapes_labels_and_disjoint_support_query():
    counts = [7, 12, 9, 30, 8, 15]  # classes of different sizes
    split = indexed_split(counts)
    ep = make(split, ways=4, shots=2, query=3).sample(50)
    assert ep.support_x.shape == (50, 8, 2, 1, 1) and ep.query_x.shape == (50, 12, 2, 1, 1)
    for b in range(50):
        s, q = trace(ep.support_x[b]), trace(ep.query_x[b])
        assert not set(s.tolist()) & set(q.tolist()), "support and query share an image"
        assert len(set(s.tolist())) == 8 and len(set(q.tolist())) == 12
        true_s, true_q = split.labels[s], split.labels[q]
        # labels are remapped 0..ways-1 and consistent between support and query
        for label in range(4):
            cls = true_s[ep.support_y[b] == label]
            assert cls.numel() == 2 and (cls == cls[0]).all()
            assert (true_q[ep.query_y[b] == label] == cls[0]).all()
        assert sorted(ep.support_y[b].tolist()) == sorted([0, 0, 1, 1, 2, 2, 3, 3])
        assert len(set(true_s.tolist())) == 4


def test_every_class_and_image_gets_drawn():
    split = indexed_split([5, 5, 5, 20])
    ep = make(split, ways=2, shots=1, query=1).sample(2000)
    seen = torch.cat([trace(ep.support_x).flatten(), trace(ep.query_x).flatten()]).unique()
    assert seen.numel() == 35


def test_same_seed_same_episodes_other_seed_differs():
    split = indexed_split([6] * 10)
    a = make(split, 5, 1, 2, seed=3).sample(4)
    b = make(split, 5, 1, 2, seed=3).sample(4)
    c = make(split, 5, 1, 2, seed=4).sample(4)
    assert torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.query_x, c.query_x)


def test_more_ways_than_classes_is_a_config_error():
    with pytest.raises(ConfigError, match="task.ways=6.*only 5 classes"):
        make(indexed_split([4] * 5), ways=6, shots=1, query=1)


def test_shots_plus_query_over_class_size_names_the_class():
    with pytest.raises(ConfigError, match="class 'c2'.*only 3 images"):
        make(indexed_split([5, 5, 3, 5]), ways=2, shots=2, query=2)


def test_ungrouped_labels_and_empty_split_are_rejected():
    with pytest.raises(DataError, match="grouped by class"):
        ImageSplit(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0]),
                   ["a", "b"])
    with pytest.raises(DataError, match="empty"):
        ImageSplit(torch.zeros(0, 1, 2, 2, dtype=torch.uint8), torch.zeros(0), [])
