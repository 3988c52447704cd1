"""Dataset sources: each turns a spec into uint8 tensors (in-memory sets) or a list of image
files (image folders), plus class names. Parsing of the on-disk formats lives here: idx
(Fashion-MNIST) and CIFAR's pickled batches (read by data.pickles); image folders are
scanned by data.scan."""
from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError, unknown
from ..io import read_bytes, regular_file
from ..limits import MAX_DATASET_BYTES, MAX_FILE_BYTES, MAX_IMAGE_SIDE, short_text
from .pickles import load_pickle
from .scan import FolderSource, scan_folder

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH", "synthetic")
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# CIFAR: (folder, train batches, test batch, meta file, label key, names key)
CIFAR = {10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
              "batches.meta", "labels", "label_names"),
         100: ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names")}

Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, C, H, W), int64 labels (N,)


@dataclass
class ArraySource:
    """A dataset held in memory; test is its official test split."""
    name: str
    class_names: list[str]
    train: Split
    test: Split | None


def load_source(spec: str, data_dir: str | None = None,
                workers: int = 4) -> ArraySource | FolderSource:
    """The source a --data spec names (docs/guides/training.md, Datasets); UserError for unknown
    specs."""
    name, sep, arg = spec.partition(":")
    if name == "imagefolder":
        if not arg:
            raise UserError("imagefolder needs a path: imagefolder:PATH")
        return scan_folder(arg, workers)
    if name == "synthetic":
        return synthetic(arg)
    loaders: dict[str, Callable[[str | None], ArraySource]] = {
        "digits": digits, "fashion-mnist": fashion_mnist,
        "cifar10": lambda d: cifar(10, d), "cifar100": lambda d: cifar(100, d)}
    if name not in loaders:
        raise unknown("dataset", name, DATASETS)
    if sep:
        raise UserError(f"dataset '{name}' takes no options (got '{spec}')")
    return loaders[name](data_dir)


def _split(x: np.ndarray, y: Any) -> Split:
    x = np.require(x, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # idx buffers are read-only
    return torch.from_numpy(x), torch.from_numpy(np.array(y, dtype=np.int64))


def digits(data_dir: str | None = None) -> ArraySource:
    """scikit-learn's bundled 8x8 digits (values 0..16, scaled to 0..255), one fixed stratified
    1,437 / 360 train/test split (random_state=0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]
    train, test = train_test_split(np.arange(len(x)), test_size=360, stratify=d.target,
                                   random_state=0)
    train, test = np.sort(train), np.sort(test)
    return ArraySource("digits", [str(i) for i in range(10)], _split(x[train], d.target[train]),
                       _split(x[test], d.target[test]))


def synthetic(arg: str = "") -> ArraySource:
    """Random images with learnable class structure: each class has a smooth random pattern,
    examples are that pattern plus noise. arg: "NxCxHxW[:CLASSES]" (N training images, N/4 test),
    default 512x3x32x32:10. Generated from a fixed seed: the same data in every run."""
    shape, _, classes = arg.partition(":")
    try:
        dims = [int(v) for v in shape.split("x")] if shape else [512, 3, 32, 32]
        k = int(classes) if classes else 10
    except ValueError:
        dims, k = [], 0
    if len(dims) != 4 or min(dims) < 1 or k < 2 or dims[0] < k:
        raise UserError(f"synthetic spec '{arg}' is not NxCxHxW[:CLASSES] with N >= CLASSES >= 2,"
                        " e.g. synthetic:512x3x32x32:10")
    if math.prod(dims) * 5 // 4 > MAX_DATASET_BYTES or max(dims[2:]) > MAX_IMAGE_SIDE \
            or dims[1] > 3:
        raise UserError(f"synthetic spec '{arg}' is too large: at most 1 or 3 channels, sides "
                        f"up to {MAX_IMAGE_SIDE} and {MAX_DATASET_BYTES / 2**30:.0f} GiB of images")
    n, c, h, w = dims
    g = torch.Generator().manual_seed(1234)
    n_test = max(k, n // 4)
    patterns = F.interpolate(torch.rand(k, c, 4, 4, generator=g), size=(h, w), mode="bilinear",
                             align_corners=False)
    labels = torch.randperm(n + n_test, generator=g) % k
    x = 40 + 170 * patterns[labels] + 25 * torch.randn(n + n_test, c, h, w, generator=g)
    x = x.round().clamp(0, 255).to(torch.uint8)
    return ArraySource("synthetic", [f"class{i}" for i in range(k)], (x[:n], labels[:n]),
                       (x[n:], labels[n:]))


def download_root(data_dir: str | None) -> Path:
    """Where downloads go: --data-dir, else $RESLAB_DATA_DIR, else ~/.cache/reslab/datasets."""
    if data_dir:
        return Path(data_dir)
    return Path(os.environ.get("RESLAB_DATA_DIR", "~/.cache/reslab/datasets")).expanduser()


def _download(kind: str, root: Path) -> None:
    """Fetches the official archives with torchvision's downloader (md5-checked). Only the
    files are fetched: torchvision's own CIFAR loader would unpickle without restrictions."""
    from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    if kind == "fashion-mnist":
        for filename, md5 in FashionMNIST.resources:
            download_url(FashionMNIST.mirrors[0] + filename, str(root / "fashion-mnist"), md5=md5)
        return
    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format; .gz or raw) as a uint8 array: magic 0x0000 08 <ndim>,
    ndim big-endian uint32 sizes, then the bytes. At most MAX_FILE_BYTES are read (decompressed),
    so a small .gz that inflates to gigabytes is refused instead of filling the memory."""
    path = regular_file(path, "idx file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        else:
            raw = read_bytes(path, "idx file", MAX_FILE_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read idx file '{path}': {exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(f"idx file '{path}' holds more than {MAX_FILE_BYTES:,} bytes "
                        "(decompressed), the most reslab reads")
    ndim = raw[3] if len(raw) >= 4 else 0
    if raw[:3] != b"\x00\x00\x08" or not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise UserError(f"'{path}' is not an idx file of unsigned bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):  # Python ints: a forged header cannot overflow
        raise UserError(f"idx file '{path}' does not match its header: {data.size} bytes for "
                        f"shape {dims}")
    return data.reshape(dims)


def _fashion_files(folder: Path) -> list[Path] | None:
    found = []
    for base in FASHION_FILES:
        hits = [folder / (base + ext) for ext in (".gz", "") if (folder / (base + ext)).is_file()]
        if not hits:
            return None
        found.append(hits[0])
    return found


def fashion_mnist(data_dir: str | None = None) -> ArraySource:
    """Fashion-MNIST from the idx files in data_dir (or a download into it); without data_dir,
    from the system copy (Debian's dataset-fashion-mnist), else the download cache or a
    download. A data_dir that was given is never swapped silently for another copy."""
    root = download_root(data_dir)
    places = ([Path(data_dir), Path(data_dir) / "fashion-mnist",
               Path(data_dir) / "FashionMNIST" / "raw"] if data_dir
              else [SYSTEM_FASHION_DIR, root / "fashion-mnist"])
    files = next((f for f in map(_fashion_files, places) if f), None)
    if files is None:
        try:
            _download("fashion-mnist", root)
        except Exception as exc:  # offline, proxy, disk: all mean "not available here"
            raise UserError(
                f"Fashion-MNIST not found (looked in {', '.join(map(str, places))}) and the "
                f"download failed ({exc}); install it with `apt-get install dataset-fashion-mnist`"
                " or pass --data-dir DIR holding the four idx .gz files") from None
        files = _fashion_files(root / "fashion-mnist")
        assert files is not None
    xtr, ytr, xte, yte = (read_idx(f) for f in files)
    for x, y, f in ((xtr, ytr, files[0]), (xte, yte, files[2])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or (y.size and y.max() >= 10):
            raise UserError(f"idx files '{f}' and its labels do not form a 10-class image set")
    return ArraySource("fashion-mnist", list(FASHION_CLASSES), _split(xtr[:, None], ytr),
                       _split(xte[:, None], yte))


def _field(d: Any, key: str, path: Path) -> Any:
    if isinstance(d, dict):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
    raise UserError(f"'{path}' is not a CIFAR batch: no '{key}' entry")


def _cifar_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = load_pickle(path)
    x = _field(d, "data", path)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 \
            or x.shape[1] != 3072:
        raise UserError(f"'{path}' is not a CIFAR batch: expected uint8 data (N, 3072) "
                        f"and N labels")
    return x.reshape(-1, 3, 32, 32), check_labels(_field(d, label_key, path), len(x), classes,
                                                  f"'{path}' ({label_key})")


def check_labels(labels: Any, n: int, classes: int, where: str) -> np.ndarray:
    """labels as int64 when they are n whole numbers in [0, classes) in one dimension; else a
    UserError saying what is wrong (a None, a negative or too large class, a 2-D array)."""
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):  # ragged nested lists
        y = np.asarray([None])
    if y.ndim != 1:
        raise UserError(f"{where}: labels must be one class index per image (1-D), got an "
                        f"array of shape {list(y.shape)}")
    if y.dtype.kind not in "iu" and not (y.dtype == object and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in y.tolist())):
        first = next((v for v in y.tolist() if not isinstance(v, int) or isinstance(v, bool)),
                     y.dtype)
        raise UserError(f"{where}: labels must be whole numbers, found {short_text(first)}")
    if len(y) != n:
        raise UserError(f"{where}: {len(y)} labels for {n} images")
    y = y.astype(np.int64) if y.dtype != object else np.array(y.tolist(), dtype=object)
    bad = [int(v) for v in y.tolist() if not 0 <= int(v) < classes]
    if bad:
        raise UserError(f"{where}: label {bad[0]} is not a class of the {classes} "
                        f"(0..{classes - 1}); {len(bad)} label(s) out of range")
    return y.astype(np.int64)


def cifar(classes: int, data_dir: str | None = None) -> ArraySource:
    """CIFAR-10/100 from the python batches (`data_dir` is the batches folder or its parent),
    else the download cache, else a download of the official archive."""
    folder, train_files, test_file, meta_file, label_key, names_key = CIFAR[classes]
    root = download_root(data_dir)
    places = [Path(data_dir) / folder, Path(data_dir)] if data_dir else []
    places = list(dict.fromkeys(places + [root / folder]))
    found = next((p for p in places if (p / test_file).is_file()), None)
    if found is None:
        try:
            _download(f"cifar{classes}", root)
        except Exception as exc:  # offline, proxy, disk: all mean "not available here"
            raise UserError(f"CIFAR-{classes} not found (looked in "
                            f"{', '.join(map(str, places))}) and the download failed ({exc}); "
                            f"pass --data-dir DIR holding {folder}/") from None
        found = root / folder
    parts = [_cifar_batch(found / f, label_key, classes) for f in train_files]
    xte, yte = _cifar_batch(found / test_file, label_key, classes)
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _field(load_pickle(found / meta_file), names_key, found / meta_file)]
    ytr = np.concatenate([p[1] for p in parts])
    if len(names) != classes or ytr.min() < 0 or max(ytr.max(), yte.max()) >= classes:
        raise UserError(f"'{found}' does not hold {classes}-class CIFAR labels")
    return ArraySource(f"cifar{classes}", names,
                       _split(np.concatenate([p[0] for p in parts]), ytr), _split(xte, yte))
