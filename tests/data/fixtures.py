"""Tiny datasets written in each format's exact on-disk layout, for tests and smoke runs.

`make_<format>(root) -> Path` writes under `root` and returns the path to pass as the loader's
`root` (`dataset.root=...`). Defaults give >= 5 classes per split and 20 images per class, enough
for 5-way 5-shot 15-query tasks. Every image is one flat colour whose red channel is
`class_value(class name)`, so a test can check that images kept their class through decoding,
resizing, grouping and caching; green varies per image.
"""
from __future__ import annotations

import csv
import io
import pickle
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from metalearn.data.cifar import CIFAR100_FINE, CIFAR100_HIERARCHY, FC100_SPLIT

SPLITS = ("train", "val", "test")


def class_value(name: str) -> int:
    """Red level of every image of class `name`: 16..239, away from JPEG's clipping range."""
    return 16 + zlib.crc32(name.encode()) % 224


def _flat(name: str, i: int, height: int, width: int) -> np.ndarray:
    rgb = np.array([class_value(name), 40 + (7 * i) % 180, 128], dtype=np.uint8)
    return np.broadcast_to(rgb, (height, width, 3)).copy()


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _dump(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol the original releases used


def _synsets(split: str, n: int) -> list[str]:
    offset = {"train": 1000, "val": 2000, "test": 3000}[split]
    return [f"n{offset + c:08d}" for c in range(n)]


def make_miniimagenet(root: Path, layout: str = "pickle", classes_per_split: int = 5,
                      images_per_class: int = 20) -> Path:
    """learn2learn's pickles (layout='pickle') or Ravi & Larochelle's CSVs + JPEGs ('csv')."""
    data = Path(root) / "mini-imagenet"
    data.mkdir(parents=True, exist_ok=True)
    pickle_names = {"train": "train", "val": "validation", "test": "test"}
    for split in SPLITS:
        names = _synsets(split, classes_per_split)
        if layout == "pickle":
            # Interleaved class order, as no loader may assume contiguous classes.
            order = [(c, i) for i in range(images_per_class) for c in range(len(names))]
            image_data = np.stack([_flat(names[c], i, 84, 84) for c, i in order])
            class_dict = {n: [k for k, (c, _) in enumerate(order) if c == ci]
                          for ci, n in enumerate(names)}
            _dump({"image_data": image_data, "class_dict": class_dict},
                  data / f"mini-imagenet-cache-{pickle_names[split]}.pkl")
        elif layout == "csv":
            rows = []
            for n in names:
                for i in range(images_per_class):
                    filename = f"{n}{i + 1:08d}.jpg"
                    # Odd, non-square sizes: the loader must resize to 84x84.
                    _save(_flat(n, i, 90 + i % 3, 100), data / "images" / filename)
                    rows.append((filename, n))
            with open(data / f"{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([("filename", "label"), *rows])
        else:
            raise ValueError(layout)
    return data


def make_tieredimagenet(root: Path, classes_per_split: int = 5, images_per_class: int = 20,
                        blob_type: str = "ndarray") -> Path:
    """Ren et al.'s pickles: PNG blobs as uint8 arrays (`blob_type='ndarray'`) or bytes."""
    data = Path(root) / "tiered-imagenet"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in SPLITS:
        names = _synsets(split, classes_per_split)
        labels = rng.permutation(np.repeat(np.arange(len(names)), images_per_class))
        seen = [0] * len(names)
        blobs = []
        for c in labels:
            png = _png_bytes(_flat(names[c], seen[c], 84, 84))
            seen[c] += 1
            blobs.append(np.frombuffer(png, dtype=np.uint8) if blob_type == "ndarray" else png)
        _dump(blobs, data / f"{split}_images_png.pkl")
        _dump({"label_specific": labels.astype(np.int64), "label_specific_str": names,
               "label_general": np.zeros(len(labels), dtype=np.int64),
               "label_general_str": ["category"]}, data / f"{split}_labels.pkl")
    return data


def make_cifar100(root: Path, images_per_class: int = 20, layout: str = "python") -> Path:
    """All 100 CIFAR-100 classes (the built-in splits need them), 32x32.

    layout: 'python' = cifar-100-python/{train,test,meta}; 'cifarfs_folders' = learn2learn's
    cifarfs/cifar100/data/<class>/*.png; 'fc100_pickles' = FC100_{train,val,test}.pickle.
    """
    root = Path(root)
    coarse_names = sorted(CIFAR100_HIERARCHY)
    coarse_of = {f: coarse_names.index(c) for c, fs in CIFAR100_HIERARCHY.items() for f in fs}
    if layout == "python":
        base = root / "cifar-100-python"
        n_test = max(1, images_per_class // 6)  # CIFAR-100 keeps 100 of 600 per class for test
        for part, counts in (("train", images_per_class - n_test), ("test", n_test)):
            fine = [c for c in range(100) for _ in range(counts)][::-1]
            images = np.stack([_flat(CIFAR100_FINE[c], i, 32, 32) for i, c in enumerate(fine)])
            _dump({"filenames": [f"img{i}.png" for i in range(len(fine))],
                   "batch_label": f"{part} batch", "fine_labels": fine,
                   "coarse_labels": [coarse_of[CIFAR100_FINE[c]] for c in fine],
                   "data": images.transpose(0, 3, 1, 2).reshape(len(fine), -1)}, base / part)
        _dump({"fine_label_names": CIFAR100_FINE, "coarse_label_names": coarse_names},
              base / "meta")
    elif layout == "cifarfs_folders":
        for name in CIFAR100_FINE:
            for i in range(images_per_class):
                _save(_flat(name, i, 32, 32),
                      root / "cifarfs" / "cifar100" / "data" / name / f"{name}_s_{i:06d}.png")
    elif layout == "fc100_pickles":
        for split in SPLITS:
            fine = [CIFAR100_FINE.index(n) for n in FC100_SPLIT[split]
                    for _ in range(images_per_class)]
            images = np.stack([_flat(CIFAR100_FINE[c], i, 32, 32) for i, c in enumerate(fine)])
            _dump({"data": images, "labels": fine}, root / f"FC100_{split}.pickle")
    else:
        raise ValueError(layout)
    return root


def make_cifarfs(root: Path, images_per_class: int = 20) -> Path:
    return make_cifar100(root, images_per_class)


def make_fc100(root: Path, images_per_class: int = 20) -> Path:
    return make_cifar100(root, images_per_class)


# Species numbers giving 5 classes in each split of both built-in CUB splits.
CUB_SPECIES = {1: "Black_footed_Albatross", 2: "Laysan_Albatross", 3: "Sooty_Albatross",
               4: "Groove_billed_Ani", 5: "Crested_Auklet", 6: "Least_Auklet",
               7: "Parakeet_Auklet", 8: "Rhinoceros_Auklet", 9: "Brewer_Blackbird",
               10: "Red_winged_Blackbird", 12: "Yellow_headed_Blackbird", 14: "Indigo_Bunting",
               15: "Lazuli_Bunting", 16: "Painted_Bunting", 18: "Spotted_Catbird",
               20: "Yellow_breasted_Chat", 28: "Brown_Creeper", 30: "Fish_Crow",
               44: "Frigatebird", 51: "Horned_Grebe", 52: "Pied_billed_Grebe",
               55: "Evening_Grosbeak", 57: "Rose_breasted_Grosbeak"}


def make_cub(root: Path, images_per_class: int = 20) -> Path:
    """<root>/CUB_200_2011/images/<NNN.Name>/*.jpg for the species in CUB_SPECIES."""
    images = Path(root) / "CUB_200_2011" / "images"
    for number, species in CUB_SPECIES.items():
        folder = f"{number:03d}.{species}"
        for i in range(images_per_class):
            _save(_flat(folder, i, 60 + 5 * (i % 3), 70),
                  images / folder / f"{species}_{i:04d}.jpg")
    return Path(root)


def make_imagefolder(root: Path, classes: int = 30, images_per_class: int = 20,
                     size: int = 24) -> Path:
    """<root>/imagefolder/<class>/*.{jpg,png}, plus a stray non-image file to be skipped.

    30 classes give >= 5 per split under the default 0.64/0.16/0.20 ratios.
    """
    data = Path(root) / "imagefolder"
    for c in range(classes):
        name = f"class_{c:02d}"
        for i in range(images_per_class):
            suffix = ".png" if i % 2 else ".jpg"
            _save(_flat(name, i, size, size + 4), data / name / f"img{i:03d}{suffix}")
    (data / "class_00" / "notes.txt").write_text("not an image")
    return data


def assert_images_match_classes(split, tolerance: int = 4) -> None:
    """Every image's red level is its class's `class_value`: labels survived the pipeline."""
    red = split.images[:, 0].float().mean(dim=(1, 2))
    for c, name in enumerate(split.class_names):
        got = red[split.labels == c]
        assert (got - class_value(name)).abs().max() <= tolerance, (name, got[:5].tolist())


def make_huggingface(root: Path, classes: int = 30, images_per_class: int = 20, size: int = 24,
                     layout: str = "save_to_disk", image_column: str = "image",
                     own_splits: dict[str, range] | None = None) -> Path:
    """<root>/huggingface: a `datasets` image-classification dataset built here, saved with
    `save_to_disk` (layout=save_to_disk) or as parquet files (layout=parquet, string labels).
    `own_splits`: split name -> class ids, saved as a DatasetDict of those splits."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    names = [f"class_{c:02d}" for c in range(classes)]
    parquet = layout == "parquet"
    features = Features({image_column: ImageFeature(),
                         "label": Value("string") if parquet else ClassLabel(names=names)})

    def rows(ids) -> Dataset:
        # Shuffled rows: the loader must group them by class itself.
        order = np.random.default_rng(0).permutation([(c, i) for c in ids
                                                      for i in range(images_per_class)])
        return Dataset.from_dict(
            {image_column: [Image.fromarray(_flat(names[c], i, size, size + 4)) for c, i in order],
             "label": [names[c] if parquet else int(c) for c, _ in order]}, features=features)

    data = Path(root) / "huggingface"
    parts = {s: rows(ids) for s, ids in (own_splits or {"train": range(classes)}).items()}
    if parquet:
        data.mkdir(parents=True)
        for s, part in parts.items():
            part.to_parquet(str(data / f"{s}-00000-of-00001.parquet"))
    else:
        DatasetDict(parts).save_to_disk(str(data))
    return data
