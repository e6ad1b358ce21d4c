"""Any Hugging Face image-classification dataset as a few-shot dataset, read by `datasets`.

`name` is a Hub id (read from the Hugging Face cache when it is there, so it works offline
with HF_DATASETS_OFFLINE=1 once downloaded) or a local path: a `save_to_disk` folder
(`datasets.load_from_disk`), or a folder of parquet files or of class image folders
(`datasets.load_dataset(path)` picks its own `parquet`/`imagefolder` builder), or one parquet
file. Rows of every split the dataset has are pooled, rows without a label (-1 or None, e.g.
an unlabelled test split) left out, and the classes split into train/val/test:
  * split=ratios: at random by `split_ratios` with `split_seed`;
  * split=classes: by the class names listed in `classes.{train,val,test}`;
  * split=dataset: the dataset's own splits named by `dataset_splits`, when no class is in two.
Images are converted to RGB (channels=3) or grayscale (channels=1), resized to image_size x
image_size ignoring the aspect ratio, decoded once and cached like every other format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from metalearn.data.base import SPLITS, FewShotDataset, ImageSplit
from metalearn.data.cache import cached_splits, fingerprint
from metalearn.data.readers import (channel_stats, decode_images, grouped_split, split_by_lists,
                                    split_by_ratio, subset_classes)
from metalearn.errors import ConfigError, DataError

SPLIT_MODES = ("ratios", "classes", "dataset")
# The Hub's usual split names; dataset.dataset_splits renames them.
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
NOT_CACHED = "not in the local cache: run once with network, or pass a local path"


def load_huggingface(name: str, image_column: str = "image", label_column: str = "label",
                     config_name: str | None = None, revision: str | None = None,
                     split: str = "ratios",
                     split_ratios: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                     classes: Mapping[str, Sequence[str] | None] | None = None,
                     dataset_splits: Mapping[str, str] | None = None, image_size: int = 84,
                     channels: int = 3, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> FewShotDataset:
    """`mean`/`std` null: computed from the train split's pixels."""
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels={channels}: use 3 (RGB) or 1 (grayscale)")
    if split not in SPLIT_MODES:
        raise ConfigError(f"dataset.split={split!r}: use one of {', '.join(SPLIT_MODES)}")
    parts = _open(str(name), config_name, revision)
    _check_columns(parts, name, image_column, label_column)
    names, labels = _labels(parts, label_column)
    if split == "dataset":
        chosen = _own_splits(parts, names, labels, dataset_splits or {}, name)
    else:
        chosen = {"all": list(parts)}
    mode = "RGB" if channels == 3 else "L"
    key = fingerprint([Path(f["filename"]) for d in parts.values() for f in d.cache_files],
                      # datasets' own hash of the content (public only as this attribute)
                      source=[(s, parts[s]._fingerprint) for s in parts], chosen=chosen,
                      image_column=image_column, label_column=label_column,
                      image_size=image_size, mode=mode, v=1)

    def build() -> dict[str, ImageSplit]:
        return {out: _decode(parts, labels, names, hf_splits, image_column, image_size, mode,
                             out, name) for out, hf_splits in chosen.items()}

    decoded = cached_splits("huggingface", key, build)
    if split == "dataset":
        splits = decoded
    else:
        everything = decoded["all"]
        if split == "ratios":
            ids = split_by_ratio(everything.num_classes, split_ratios, split_seed, str(name))
        else:
            ids = split_by_lists(everything.class_names, dict(classes or {}),
                                 {s: f"dataset.classes.{s}" for s in SPLITS},
                                 f"label in the {label_column!r} column of {name}")
        splits = {s: subset_classes(everything, ids[s], s) for s in SPLITS}
    if mean is None or std is None:
        mean, std = channel_stats(splits["train"].images)
    return FewShotDataset.from_splits(Path(str(name)).name or str(name), splits, mean, std)


def _open(name: str, config_name: str | None, revision: str | None) -> dict[str, Any]:
    """The dataset's splits, {split name: datasets.Dataset}."""
    import datasets

    path = Path(name).expanduser()
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file() and path.suffix == ".parquet":
            loaded = datasets.load_dataset("parquet", data_files=str(path))
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path), config_name, revision=revision)
        else:
            loaded = _from_hub(name, config_name, revision)
    except DataError:
        raise
    except (ValueError, OSError) as e:  # no data files, unknown config, a truncated .arrow
        raise DataError(f"dataset.name={name!r}: datasets could not read it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); if its files are damaged or "
                        f"incomplete, save or copy the dataset again") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _from_hub(name: str, config_name: str | None, revision: str | None) -> Any:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(name, config_name, revision=revision)
    except DatasetNotFoundError as e:
        if "offline" in str(e).lower():
            raise DataError(f"dataset.name={name!r} is no local folder and the Hub dataset is "
                            f"{NOT_CACHED}") from None
        raise DataError(f"dataset.name={name!r}: no local folder, and no such dataset on the "
                        f"Hugging Face Hub (a gated or private one needs `hf auth login`); "
                        f"check the id or pass a local path") from None
    except (ConnectionError, OSError) as e:  # offline mode, no route, DNS, timeouts
        raise DataError(f"dataset.name={name!r} is no local folder and the Hub dataset is "
                        f"{NOT_CACHED} ({type(e).__name__})") from None


def _check_columns(parts: dict[str, Any], name: str, image_column: str,
                   label_column: str) -> None:
    import datasets

    features = next(iter(parts.values())).features
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    for key, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in features:
            raise DataError(f"dataset.{key}={column!r}: {name} has no such column; its columns "
                            f"are {list(features)}")
    if not isinstance(features[image_column], datasets.Image):
        raise DataError(f"dataset.image_column={image_column!r}: that column of {name} holds "
                        f"{type(features[image_column]).__name__} values, not images; its image "
                        f"columns are {images}")


def _labels(parts: dict[str, Any], label_column: str) -> tuple[list[str], dict[str, list[int]]]:
    """Class names and, per split, each row's class id (-1: no label)."""
    import datasets

    feature = next(iter(parts.values())).features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), {s: [-1 if v is None else int(v) for v in d[label_column]]
                                     for s, d in parts.items()}
    values = {s: list(d[label_column]) for s, d in parts.items()}
    names = sorted({str(v) for vs in values.values() for v in vs if v is not None})
    ids = {n: i for i, n in enumerate(names)}
    return names, {s: [-1 if v is None else ids[str(v)] for v in vs] for s, vs in values.items()}


def _own_splits(parts: dict[str, Any], names: list[str], labels: dict[str, list[int]],
                dataset_splits: Mapping[str, str], name: str) -> dict[str, list[str]]:
    chosen = {s: [{**HUB_SPLITS, **dataset_splits}[s]] for s in SPLITS}
    seen: dict[int, str] = {}
    for s, (hf,) in chosen.items():
        if hf not in parts:
            raise DataError(f"dataset.dataset_splits.{s}={hf!r}: {name} has no such split; its "
                            f"splits are {list(parts)}")
        for c in set(labels[hf]) - {-1}:
            if c in seen:
                raise DataError(f"{name}'s {seen[c]!r} and {hf!r} splits share class "
                                f"{names[c]!r}: its splits are not class-disjoint, so use "
                                f"dataset.split=ratios or dataset.split=classes")
            seen[c] = hf
    return chosen


def _decode(parts: dict[str, Any], labels: dict[str, list[int]], names: list[str],
            hf_splits: list[str], image_column: str, image_size: int, mode: str, out: str,
            name: str) -> ImageSplit:
    import datasets

    sources, ys, where = [], [], []
    for s in hf_splits:
        raw = parts[s].cast_column(image_column, datasets.Image(decode=False))
        for row, (image, y) in enumerate(zip(raw[image_column], labels[s])):
            if y < 0:
                continue
            if image is None or not (image.get("bytes") or image.get("path")):
                raise DataError(f"{name}: row {row} of split {s!r} has no image; drop it from "
                                f"the dataset")
            sources.append(image["bytes"] or Path(image["path"]))
            ys.append(y)
            where.append(f"{name}: row {row} of split {s!r}")
    if not sources:
        raise DataError(f"{name}: no labelled rows in splits {hf_splits}")
    images = decode_images(sources, image_size, mode, describe=where.__getitem__)
    return grouped_split(images, ys, names, out)
