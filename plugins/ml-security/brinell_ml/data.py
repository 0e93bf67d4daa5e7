"""Datasets for ML-security experiments.

Every loader returns a :class:`Dataset` whose inputs are flattened grayscale images (one row
per sample, ``image_shape`` gives the 2-D layout) scaled to ``clip_values`` = (0, 1), so
scikit-learn models, PyTorch models and ART attacks all see the same arrays.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from prefect.cache_policies import NO_CACHE

from brinell import task

__all__ = [
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "seed_everything",
    "subset",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class Dataset:
    """Train/test split of flattened images in ``clip_values``, labels ``0..n_classes-1``.

    ``source`` says how to load the same split again (``{"name": "digits", "test_size":
    0.25, "seed": 0}``); models keep it, so an attack job can evaluate on the held-out set.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int]
    n_classes: int
    clip_values: tuple[float, float] = (0.0, 1.0)
    class_names: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.image_shape[0] * self.image_shape[1])

    def images(self, x: np.ndarray) -> np.ndarray:
        """``x`` as (N, H, W) images."""
        return np.asarray(x).reshape((-1, *self.image_shape))


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and (when already imported) torch, which ART attacks draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def _split(
    x: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=stratify
    )
    return x_train, x_test, y_train, y_test


def _as_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot
        y = y.argmax(axis=1)
    return y.astype(np.int64)


def _as_images(x: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Flattens (N, H, W), (N, H, W, 1), (N, 1, H, W) or square (N, D) inputs."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        if x.shape[-1] == 1:
            x = x[..., 0]
        elif x.shape[1] == 1:
            x = x[:, 0]
        else:
            raise ValueError(f"expected grayscale images, got shape {x.shape}")
    if x.ndim == 3:
        shape = (int(x.shape[1]), int(x.shape[2]))
    elif x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(f"cannot infer a square image shape from {x.shape[1]} features")
        shape = (side, side)
    else:
        raise ValueError(f"unsupported input shape {x.shape}")
    return x.reshape(len(x), -1), shape


def _scale(*arrays: np.ndarray) -> list[np.ndarray]:
    """Scales to [0, 1]: by 255 when the data looks like 8-bit pixels, else by its maximum."""
    top = max(float(a.max()) for a in arrays if a.size)
    divisor = 255.0 if top > 1.0 and top <= 255.0 else max(top, 1.0)
    return [np.clip(a / divisor, 0.0, 1.0).astype(np.float32) for a in arrays]


@task(cache_policy=NO_CACHE)
def load_digits(test_size: float = 0.25, seed: int = 0) -> Dataset:
    """Loads scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), scales
    pixels from 0..16 to [0, 1] and splits them into a stratified, seeded train/test split."""
    from sklearn import datasets

    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = _split(x, y, test_size, seed)
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        image_shape=(8, 8),
        n_classes=10,
        clip_values=(0.0, 1.0),
        class_names=[str(i) for i in range(10)],
        source={"name": "digits", "test_size": test_size, "seed": seed},
    )


@task(cache_policy=NO_CACHE)
def load_npz(path: str, test_size: float = 0.25, seed: int = 0) -> Dataset:
    """Loads grayscale images from a NumPy ``.npz`` file with keys x_train/y_train/x_test/y_test,
    or x/y (split here, stratified and seeded); images may be (N, H, W), (N, H, W, 1) or flat
    squares, labels integers or one-hot; pixels are scaled to [0, 1]."""
    with np.load(path) as archive:
        keys = set(archive.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            x_train, shape = _as_images(archive["x_train"])
            x_test, test_shape = _as_images(archive["x_test"])
            if shape != test_shape:
                raise ValueError(f"train images are {shape} but test images are {test_shape}")
            y_train, y_test = _as_labels(archive["y_train"]), _as_labels(archive["y_test"])
        elif {"x", "y"} <= keys:
            x, shape = _as_images(archive["x"])
            x_train, x_test, y_train, y_test = _split(x, _as_labels(archive["y"]), test_size, seed)
        else:
            raise ValueError(
                f"{path}: expected keys x_train, y_train, x_test, y_test (or x, y); "
                f"found {sorted(keys)}"
            )
    x_train, x_test = _scale(x_train, x_test)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        image_shape=shape,
        n_classes=n_classes,
        clip_values=(0.0, 1.0),
        class_names=[str(i) for i in range(n_classes)],
        source={"name": "npz", "path": path, "test_size": test_size, "seed": seed},
    )


@task(cache_policy=NO_CACHE)
def load_image_folder(
    path: str, image_size: int = 28, test_size: float = 0.25, seed: int = 0
) -> Dataset:
    """Loads a folder with one subfolder of PNG/JPEG images per class (subfolder names, sorted,
    become class names), converting each image to grayscale, resizing it to
    ``image_size`` x ``image_size`` and scaling pixels to [0, 1], then splits it seeded."""
    from PIL import Image

    classes = sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise ValueError(f"{path}: no class subfolders found")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        for filename in sorted(os.listdir(folder)):
            if not filename.lower().endswith(_IMAGE_SUFFIXES):
                continue
            with Image.open(os.path.join(folder, filename)) as image:
                gray = image.convert("L").resize(
                    (image_size, image_size), Image.Resampling.BILINEAR
                )
                xs.append(np.asarray(gray, dtype=np.float32).reshape(-1) / 255.0)
            ys.append(label)
    if not xs:
        raise ValueError(f"{path}: no images found in {', '.join(classes)}")
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    x_train, x_test, y_train, y_test = _split(x, y, test_size, seed)
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        image_shape=(image_size, image_size),
        n_classes=len(classes),
        clip_values=(0.0, 1.0),
        class_names=classes,
        source={
            "name": "image_folder",
            "path": path,
            "image_size": image_size,
            "test_size": test_size,
            "seed": seed,
        },
    )


@task(cache_policy=NO_CACHE)
def load_dataset(source: dict[str, Any]) -> Dataset:
    """Loads a dataset again from its ``Dataset.source`` (kept by a trained model as
    ``trained_on``), giving the same train/test split, so a model loaded in another job is
    evaluated on data it did not train on; a backdoor recorded in the source is not
    replayed (the clean data is returned)."""
    name = source.get("name")
    test_size, seed = float(source.get("test_size", 0.25)), int(source.get("seed", 0))
    if name == "digits":
        return load_digits.fn(test_size=test_size, seed=seed)
    if name == "npz":
        return load_npz.fn(str(source["path"]), test_size=test_size, seed=seed)
    if name == "image_folder":
        return load_image_folder.fn(
            str(source["path"]),
            image_size=int(source["image_size"]),
            test_size=test_size,
            seed=seed,
        )
    raise ValueError(f"cannot reload a dataset from {source!r}")


@task(cache_policy=NO_CACHE)
def subset(data: Dataset, n_test: int, seed: int = 0) -> Dataset:
    """Keeps a seeded random sample of ``n_test`` test inputs (all of them when there are
    fewer) so slow attacks finish quickly; the training set is unchanged."""
    n = len(data.x_test)
    if n_test >= n:
        return data
    keep = np.sort(np.random.default_rng(seed).permutation(n)[:n_test])
    return replace(data, x_test=data.x_test[keep], y_test=data.y_test[keep])
