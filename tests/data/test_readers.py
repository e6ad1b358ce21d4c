import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.data.base import ImageSplit
from metalearn.data.readers import (channel_stats, decode_images, grouped_split, load_pickle,
                                    looks_like_html, resize_uint8, str_keys, subset_classes)
from metalearn.errors import DataError


class _Evil:
    def __reduce__(self):
        import os
        return (os.getcwd, ())  # harmless here, but any callable could be named


def _write(path, obj, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_pickle_round_trips_arrays_and_containers(tmp_path, protocol):
    obj = {"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": [b"\x89PNG", b"", "x", 3.5],
           "c": np.int64(7), "d": np.array(["ab", "c"]), "e": {1, 2}, "f": np.zeros(0)}
    got = load_pickle(_write(tmp_path / "x.pkl", obj, protocol), "nowhere")
    np.testing.assert_array_equal(got["a"], obj["a"])
    assert got["b"] == obj["b"] and got["c"] == 7 and list(got["d"]) == ["ab", "c"]
    assert got["e"] == {1, 2} and got["f"].shape == (0,)


def test_load_pickle_refuses_code(tmp_path):
    path = _write(tmp_path / "evil.pkl", {"image_data": _Evil()})
    with pytest.raises(DataError, match=r"evil\.pkl is not a dataset pickle.*posix\.getcwd|"
                                        r"evil\.pkl is not a dataset pickle.*nt\.getcwd"):
        load_pickle(path, "https://example.org/data")


def test_load_pickle_names_html_pages_and_where_to_download(tmp_path):
    path = tmp_path / "mini.pkl"
    path.write_text("\n  <!DOCTYPE html><html><head><title>Google Drive - Quota exceeded")
    with pytest.raises(DataError, match=r"mini\.pkl is an HTML page, not a pickle.*"
                                        r"download it again from https://example\.org/data"):
        load_pickle(path, "https://example.org/data")


def test_load_pickle_truncated(tmp_path):
    path = _write(tmp_path / "t.pkl", {"a": np.zeros((50, 50), np.uint8)})
    path.write_bytes(path.read_bytes()[:-700])
    with pytest.raises(DataError, match=r"t\.pkl is truncated or corrupt.*download it again"):
        load_pickle(path, "src")


def test_html_detection_is_not_fooled_by_binary_data():
    assert looks_like_html(b"\xef\xbb\xbf<!doctype HTML>")
    assert looks_like_html(b"<?xml version='1.0'?><html>")
    assert not looks_like_html(pickle.dumps({"a": 1}))
    assert not looks_like_html(b"\x89PNG\r\n\x1a\n<html")


def test_str_keys_accepts_bytes_keys_and_names_missing_ones(tmp_path):
    assert str_keys({b"data": 1, "labels": 2}, tmp_path, ("data", "labels")) == {
        "data": 1, "labels": 2}
    with pytest.raises(DataError, match=r"lacks the keys \['labels'\]"):
        str_keys({"data": 1}, tmp_path, ("data", "labels"))
    with pytest.raises(DataError, match="holds a list"):
        str_keys([1], tmp_path, ("data",))


def _png(color, size=(10, 8), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_images_resizes_converts_and_stacks_nchw():
    out = decode_images([_png((200, 10, 30)), _png(77, mode="L")], 6, "RGB")
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 6, 6)
    assert out[0, :, 0, 0].tolist() == [200, 10, 30] and out[1, :, 3, 3].tolist() == [77] * 3
    gray = decode_images([_png((200, 10, 30))], 4, "L")
    assert gray.shape == (1, 1, 4, 4)


def test_decode_images_names_the_bad_one(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "broken.jpg"
    good.write_bytes(_png((1, 2, 3)))
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg.*replace it"):
        decode_images([good, bad], 8, "RGB")
    blobs = [_png((1, 2, 3)), _png((1, 2, 3))[:40]]
    with pytest.raises(DataError, match=r"image #1 of x\.pkl"):
        decode_images(blobs, 8, "RGB", describe=lambda i: f"image #{i} of x.pkl")


def test_decode_images_without_resize_needs_equal_sizes():
    with pytest.raises(DataError, match="set dataset.image_size"):
        decode_images([_png(1, (8, 8)), _png(1, (9, 8))], None, "RGB", describe=str)


def test_grouped_split_sorts_by_class_and_drops_unused_names():
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1)
    split = grouped_split(images, [3, 1, 3, 1, 1], ["a", "b", "c", "d"], "train")
    assert split.class_names == ["b", "d"]
    assert split.labels.tolist() == [0, 0, 0, 1, 1]
    assert split.images.flatten().tolist() == [1, 3, 4, 0, 2]


def test_subset_classes_relabels_in_given_order():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1)
    split = ImageSplit(images, torch.tensor([0, 0, 1, 2, 2, 2]), ["a", "b", "c"], "all")
    sub = subset_classes(split, [2, 0], "val")
    assert sub.class_names == ["c", "a"] and sub.labels.tolist() == [0, 0, 0, 1, 1]
    assert sub.images.flatten().tolist() == [3, 4, 5, 0, 1]


def test_channel_stats_matches_float_computation():
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=8)
    x = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean(1), atol=1e-9)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.std(1, unbiased=False),
                          atol=1e-7)


def test_resize_uint8_keeps_flat_colours():
    images = torch.full((3, 3, 84, 84), 120, dtype=torch.uint8)
    out = resize_uint8(images, 32, chunk=2)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8 and (out == 120).all()
    assert resize_uint8(images, 84) is images
