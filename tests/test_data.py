"""reslab.data: every source, deterministic/resumable/sharded batching, augmentation geometry,
statistics, and the error messages users see."""
from __future__ import annotations

import gzip
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.data import Data, load_data, open_image, preprocess, to_channels
from reslab.data import augment as A
from reslab.data import normalize as N
from reslab.data import datasets as D
from reslab.errors import UserError

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- file builders
def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(arr, np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def fake_fashion(folder: Path, n_train: int = 60, n_test: int = 20, ext: str = ".gz"):
    rng = np.random.default_rng(1)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)
    folder.mkdir(parents=True, exist_ok=True)
    for base, arr in zip(D.FASHION_FILES, arrays):
        write_idx(folder / (base + ext), arr.astype(np.uint8))
    return arrays


def fake_cifar(root: Path, classes: int, n: int = 20):
    """Batches in the exact format of the official python archives (bytes keys)."""
    folder, train_files, test_file, meta_file, label_key, names_key = D.CIFAR[classes]
    out = root / folder
    out.mkdir(parents=True)
    rng = np.random.default_rng(classes)
    written = []
    for name in train_files + [test_file]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, classes, n))
        with open(out / name, "wb") as f:
            pickle.dump({b"data": data, label_key.encode(): labels, b"batch_label": b"x"}, f)
        written.append((data, labels))
    names = [f"c{i}".encode() for i in range(classes)]
    with open(out / meta_file, "wb") as f:
        pickle.dump({names_key.encode(): names}, f, protocol=2)
    return out, written


def make_folder(root: Path, modes=("RGB", "L", "RGBA", "P", "I;16"), corrupt: bool = True,
                splits=("train", "val")) -> Path:
    """PNG/JPEG images of several modes and sizes in each of splits' folders (train/ and
    val/ by default), one corrupt file in train/."""
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (20, 50), (33, 33), (64, 48), (30, 36)]
    for split in splits:
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i, mode in enumerate(modes):
                w, h = sizes[i % len(sizes)]
                rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                img = (Image.fromarray(rgb[..., 0].astype(np.uint16) * 257) if mode == "I;16"
                       else Image.fromarray(rgb).convert(mode))
                img.save(root / split / cls / f"{i}.{'jpg' if mode == 'L' else 'png'}")
    if corrupt:
        (root / "train" / "cat" / "broken.png").write_bytes(b"definitely not a png" * 5)
    return root


def collect(batches):
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def synth() -> Data:
    return load_data("synthetic:96x3x12x12:4", val_split=16, seed=3, pad=2)


# ---------------------------------------------------------------------------- sources
def test_digits_split_classes_and_stats():
    from sklearn.datasets import load_digits

    data = load_data("digits", augment="none")
    assert data.class_names == [str(i) for i in range(10)]
    assert (data.in_chans, data.input_size, data.splits) == (1, (1, 8, 8), ("train", "test"))
    assert (data.num_examples("train"), data.num_examples("test")) == (1437, 360)
    x, y = collect(data.eval_batches("test", 100, CPU))
    assert torch.bincount(y).min() >= 35  # stratified: 36 +- 1 of each digit
    raw = np.rint(load_digits().images * 255 / 16) / 255
    train, _ = collect(data.eval_batches("train", 500, CPU))
    pixels = train * data.std[0] + data.mean[0]  # undo normalisation
    assert abs(data.mean[0] - pixels.mean().item()) < 1e-5
    assert abs(data.std[0] - pixels.std(unbiased=False).item()) < 1e-5
    assert abs(data.mean[0] - raw.mean()) < 0.01  # the split is representative
    assert x.shape == (360, 1, 8, 8) and x.dtype == torch.float32


@pytest.mark.parametrize("ext", [".gz", ""])
def test_fashion_mnist_from_idx_files(tmp_path, ext):
    xtr, ytr, xte, yte = fake_fashion(tmp_path / "fm", ext=ext)
    src = D.fashion_mnist(str(tmp_path / "fm"))
    assert src.class_names[0] == "T-shirt/top" and src.class_names[9] == "Ankle boot"
    assert torch.equal(src.train[0], torch.from_numpy(xtr.astype(np.uint8))[:, None])
    assert torch.equal(src.test[1], torch.from_numpy(yte))
    data = load_data("fashion-mnist", data_dir=str(tmp_path / "fm"))
    assert data.input_size == (1, 28, 28) and data.num_examples("test") == 20
    assert abs(data.mean[0] - xtr.mean() / 255) < 1e-6


def test_fashion_mnist_system_copy():
    if D._fashion_files(D.SYSTEM_FASHION_DIR) is None:
        pytest.skip("dataset-fashion-mnist is not installed")
    data = load_data("fashion-mnist")
    assert (data.num_examples("train"), data.num_examples("test")) == (60000, 10000)
    # Published statistics of Fashion-MNIST's training set.
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-4)
    assert data.std[0] == pytest.approx(0.3530, abs=1e-4)
    x, y = next(data.train_batches(0, 256, CPU))
    assert x.shape == (256, 1, 28, 28) and y.dtype == torch.int64


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "SYSTEM_FASHION_DIR", tmp_path / "none")

    def offline(kind, root):
        raise OSError("network unreachable")

    monkeypatch.setattr(D, "_download", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as err:
        load_data("fashion-mnist", data_dir=str(empty))
    places = ", ".join(str(p) for p in (empty, empty / "fashion-mnist",
                                        empty / "FashionMNIST" / "raw"))
    assert str(err.value) == (
        f"Fashion-MNIST not found (looked in {places}) and the download failed (network "
        "unreachable); install it with `apt-get install dataset-fashion-mnist` or pass "
        "--data-dir DIR holding the four idx .gz files")


def test_a_given_data_dir_is_not_swapped_for_the_system_copy(tmp_path, monkeypatch):
    """--data-dir names where the data is: a directory without it is an error (after the
    download into it fails), even where the system copy exists."""
    fake_fashion(tmp_path / "system")
    monkeypatch.setattr(D, "SYSTEM_FASHION_DIR", tmp_path / "system")
    monkeypatch.setattr(D, "_download", lambda kind, root: (_ for _ in ()).throw(OSError("offline")))
    assert len(D.fashion_mnist().train[0]) == 60  # no --data-dir: the system copy
    with pytest.raises(UserError, match="Fashion-MNIST not found"):
        D.fashion_mnist(str(tmp_path / "mine"))


def test_idx_corrupt_files(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # 0x0d = float, not ubyte
    with pytest.raises(UserError, match="is not an idx file of unsigned bytes"):
        D.read_idx(bad)
    write_idx(bad, np.zeros((4, 3, 3), np.uint8))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"match its header: 31 bytes for shape \(4, 3, 3\)"):
        D.read_idx(bad)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_batches(tmp_path, classes):
    folder, written = fake_cifar(tmp_path, classes)
    for data_dir in (tmp_path, folder):  # the parent or the batches folder itself
        data = load_data(f"cifar{classes}", data_dir=str(data_dir), augment="none")
        assert data.class_names == [f"c{i}" for i in range(classes)]
        assert data.input_size == (3, 32, 32)
    n_train = 20 * len(D.CIFAR[classes][1])
    assert (data.num_examples("train"), data.num_examples("test")) == (n_train, 20)
    src = D.cifar(classes, str(tmp_path))
    test_data, test_labels = written[-1]
    # Row layout: 1024 red, then green, then blue values, each row-major 32x32.
    assert src.test[0][3, 1, 2, 5] == test_data[3, 1024 + 2 * 32 + 5]
    assert src.test[1].tolist() == [int(v) for v in test_labels]


class Payload:
    """Unpickling this would run exec(): the restricted unpickler must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_restricted_unpickler_refuses_code(tmp_path):
    folder, _ = fake_cifar(tmp_path, 10, n=4)
    marker = tmp_path / "marker"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Payload(marker), b"labels": [0]}, f)
    with pytest.raises(UserError) as err:
        load_data("cifar10", data_dir=str(tmp_path))
    assert str(err.value) == (
        f"refusing to load '{folder / 'test_batch'}': it references builtins.exec, which is not "
        "part of a numpy array (only arrays and plain values are allowed)")
    assert not marker.exists()
    # Every protocol of a real numpy array is accepted (numpy 2 module names included).
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "a.pkl").write_bytes(pickle.dumps({"a": arr}, protocol=protocol))
        assert np.array_equal(D.load_pickle(tmp_path / "a.pkl")["a"], arr)


def test_synthetic_is_learnable_and_configurable():
    data = load_data("synthetic")
    assert data.input_size == (3, 32, 32) and len(data.class_names) == 10
    assert (data.num_examples("train"), data.num_examples("test")) == (512, 128)
    small = load_data("synthetic:64x1x8x8:4", augment="none")
    assert small.input_size == (1, 8, 8) and small.num_examples("test") == 16
    # Nearest class mean classifies held-out images well: there is structure to learn.
    xtr, ytr = collect(data.eval_batches("train", 512, CPU))
    xte, yte = collect(data.eval_batches("test", 512, CPU))
    means = torch.stack([xtr[ytr == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(xte.flatten(1), means).argmin(1)
    assert (pred == yte).float().mean() > 0.9


@pytest.mark.parametrize("spec, message", [
    ("cifar", "unknown dataset 'cifar' (closest: cifar10, cifar100)"),
    ("mnist", "unknown dataset 'mnist' (closest: fashion-mnist)"),
    ("xyz", "unknown dataset 'xyz' (choices: digits, fashion-mnist, cifar10, cifar100, "
            "imagefolder:PATH, synthetic)"),
    ("digits:8", "dataset 'digits' takes no options (got 'digits:8')"),
    ("imagefolder:", "imagefolder needs a path: imagefolder:PATH"),
    ("synthetic:3x3", "synthetic spec '3x3' is not NxCxHxW[:CLASSES] with N >= CLASSES >= 2, "
                      "e.g. synthetic:512x3x32x32:10"),
])
def test_bad_specs(spec, message):
    with pytest.raises(UserError) as err:
        load_data(spec)
    assert str(err.value) == message


@pytest.mark.parametrize("kwargs, message", [
    ({"augment": "crops"}, "unknown augmentation 'crops' (closest: crop, crop-flip)"),
    ({"normalize": "pixels"}, "unknown normalization 'pixels' (closest: pixel)"),
    ({"val_split": -1}, "invalid val_split -1: must be between 0 and 1,000,000,000"),
    ({"val_split": 512}, "--val-split 512 leaves no training images: synthetic has 512"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(UserError) as err:
        load_data("synthetic", **kwargs)
    assert str(err.value) == message


# ---------------------------------------------------------------------------- batching
def test_batches_are_a_function_of_seed_and_epoch(synth):
    state = torch.get_rng_state()
    a = list(synth.train_batches(1, 16, CPU, seed=5))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    b = list(synth.train_batches(1, 16, CPU, seed=5))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    for other in (synth.train_batches(2, 16, CPU, seed=5), synth.train_batches(1, 16, CPU)):
        assert not torch.equal(next(other)[0], a[0][0])
    assert len(a) == synth.steps_per_epoch(16) == 80 // 16


def test_start_step_resumes_exactly(synth):
    full = list(synth.train_batches(0, 16, CPU, seed=1))
    rest = list(synth.train_batches(0, 16, CPU, seed=1, start_step=3))
    assert len(rest) == len(full) - 3
    for (x, y), (xf, yf) in zip(rest, full[3:]):
        assert torch.equal(x, xf) and torch.equal(y, yf)
    assert list(synth.train_batches(0, 16, CPU, start_step=5)) == []


def test_shards_partition_the_global_batch(synth):
    whole = list(synth.train_batches(0, 16, CPU, seed=2))
    shards = [list(synth.train_batches(0, 16, CPU, seed=2, rank=r, world_size=2))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == synth.steps_per_epoch(16, 2) == len(whole)
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shards):
        assert x0.shape[0] == x1.shape[0] == 8
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
        assert not any(torch.equal(a, b) for a in x0 for b in x1)  # disjoint examples
    with pytest.raises(UserError, match="positive multiple of the world size 3"):
        synth.steps_per_epoch(16, 3)


def test_random_erasing_rectangles_and_their_draws():
    """erase=1: every image has one zero (mean-colour) rectangle of 2-40% of its area with an
    aspect in [0.3, 3.3], everything else untouched; the order and crop/flip draws are those
    of a plan without erasing; resume and shards see the same rectangles."""
    from reslab.data.augment import ERASE_AREA, epoch_generator, plan_epoch

    plain = load_data("synthetic:96x3x12x12:4", seed=3, pad=2)
    erased = load_data("synthetic:96x3x12x12:4", seed=3, pad=2, erase=1.0)
    assert erased.erase == 1.0 and plain.erase == 0.0
    a, b = plan_epoch(80, "crop-flip", epoch_generator(1, 0), pad=2), \
        plan_epoch(80, "crop-flip", epoch_generator(1, 0), pad=2, erase=0.5)
    assert torch.equal(a.order, b.order) and torch.equal(a.params["shift"], b.params["shift"])
    for (x0, y0), (x1, y1) in zip(plain.train_batches(0, 16, CPU, seed=1),
                                  erased.train_batches(0, 16, CPU, seed=1)):
        assert torch.equal(y0, y1)
        changed = (x0 != x1).any(1)  # (N, H, W): the erased pixels (where x0 was not 0)
        zero = (x1 == 0).all(1)
        assert torch.equal(changed & ~zero, torch.zeros_like(changed))  # only zeros written
        for img in zero:
            rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
            h, w = len(rows), len(cols)
            assert rows.max() - rows.min() + 1 == h and img[rows.min():rows.max() + 1,
                                                          cols.min():cols.max() + 1].all()
            assert ERASE_AREA[0] * 144 - 12 <= h * w <= ERASE_AREA[1] * 144 + 12
    full = list(erased.train_batches(0, 16, CPU, seed=1))
    rest = list(erased.train_batches(0, 16, CPU, seed=1, start_step=2))
    assert all(torch.equal(x, xf) for (x, _), (xf, _) in zip(rest, full[2:]))
    half = next(erased.train_batches(0, 16, CPU, seed=1, rank=1, world_size=2))[0]
    assert torch.equal(half, full[0][0][8:])
    some = load_data("synthetic:96x3x12x12:4", seed=3, pad=2, erase=0.5)
    hit = torch.cat([((x == 0).all(1).flatten(1).any(1)) for x, _ in
                     some.train_batches(0, 16, CPU, seed=1)]).float().mean()
    assert 0.3 < hit < 0.7
    with pytest.raises(UserError, match="invalid erase 1.5"):
        load_data("synthetic:96x3x12x12:4", erase=1.5)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_covers_every_example_once(synth, world_size):
    full_x, full_y = collect(synth.eval_batches("test", 7, CPU))
    parts = [collect(synth.eval_batches("test", 7, CPU, rank=r, world_size=world_size))
             for r in range(world_size)]
    assert sum(len(y) for _, y in parts) == len(full_y) == synth.num_examples("test") == 24
    for r, (x, y) in enumerate(parts):
        assert torch.equal(x, full_x[r::world_size]) and torch.equal(y, full_y[r::world_size])
    # Evaluation is unaugmented: twice the same.
    assert torch.equal(collect(synth.eval_batches("test", 5, CPU))[0], full_x)


def test_val_split_is_held_out_of_train(synth):
    def raw_rows(d: Data, split: str) -> set[tuple]:
        """The split's images as uint8 rows (normalisation differs: stats are train-only)."""
        x = collect(d.eval_batches(split, 96, CPU))[0]
        x = x * torch.tensor(d.std).view(1, -1, 1, 1) + torch.tensor(d.mean).view(1, -1, 1, 1)
        return {tuple(r) for r in x.mul(255).round().flatten(1).tolist()}

    whole = load_data("synthetic:96x3x12x12:4", augment="none")
    assert synth.splits == ("train", "val", "test")
    assert (synth.num_examples("train"), synth.num_examples("val")) == (80, 16)
    train, val = raw_rows(synth, "train"), raw_rows(synth, "val")
    assert not train & val and train | val == raw_rows(whole, "train")
    assert synth.mean != whole.mean
    again = load_data("synthetic:96x3x12x12:4", val_split=16, seed=3)
    other = load_data("synthetic:96x3x12x12:4", val_split=16, seed=4)
    assert raw_rows(again, "val") == val and raw_rows(other, "val") != val


# ---------------------------------------------------------------------------- augmentation
def test_crop_of_padded_image_is_a_shift_and_flip_is_exact():
    x = torch.randint(0, 256, (5, 3, 7, 9), dtype=torch.uint8)
    shift = torch.tensor([[0, 0], [4, 4], [2, 3], [1, 4], [3, 0]])
    out = A.crop_flip(x, shift, torch.zeros(5, dtype=torch.bool), pad=2, fill=0)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n, (dy, dx) in enumerate(shift.tolist()):
        assert torch.equal(out[n], padded[n, :, dy:dy + 7, dx:dx + 9])
    # (dy, dx) = (2, 2) is the identity; mirrored, it is exactly the reversed image.
    centre = torch.full((5, 2), 2)
    assert torch.equal(A.crop_flip(x, centre, torch.zeros(5, dtype=torch.bool), 2), x)
    assert torch.equal(A.crop_flip(x, centre, torch.ones(5, dtype=torch.bool), 2), x.flip(-1))
    flip = torch.tensor([True, False, True, False, True])
    assert torch.equal(A.hflip(x, flip)[flip], x[flip].flip(-1))
    assert torch.equal(A.hflip(x, flip)[~flip], x[~flip])


@pytest.mark.parametrize("normalize", ["channel", "pixel"])
def test_train_batches_are_normalised_crops_of_the_planned_images(normalize):
    data = load_data("synthetic:64x3x10x10:4", normalize=normalize, pad=3)
    plan = A.plan_epoch(64, "crop-flip", A.epoch_generator(7, 2), pad=3)
    x, y = next(data.train_batches(2, 32, CPU, seed=7))
    order, params = plan.take(0, 32)
    raw, labels = data._arrays["train"]
    crops = A.crop_flip(raw[order], params["shift"], params["flip"], 3, data.normalize.fill)
    assert torch.equal(y, labels[order])
    if normalize == "channel":
        assert torch.allclose(x, data.normalize(crops.float() / 255), atol=1e-5)
    else:  # the per-pixel mean moves with the pixels; padding comes out as 0
        shifted_mean = A.crop_flip(data.mean_image[None].expand(32, -1, -1, -1).contiguous(),
                                   params["shift"], params["flip"], 3)
        expect = (crops.float() / 255 - shifted_mean) / data.std[0]
        inside = A.crop_flip(torch.ones_like(raw[order]), params["shift"], params["flip"], 3) > 0
        assert torch.allclose(x[inside], expect[inside], atol=1e-5)
        assert x[~inside].abs().max() < 1e-6


def test_mean_std_channel_and_pixel():
    x = torch.randint(0, 256, (50, 3, 6, 5), dtype=torch.uint8)
    f = x.double() / 255
    ch = N.compute_stats(x, "channel", chunk=7)
    assert np.allclose(ch.mean, f.mean((0, 2, 3)).tolist())
    assert np.allclose(ch.std, f.std((0, 2, 3), unbiased=False).tolist())
    px = N.compute_stats(x, "pixel", chunk=7)
    assert torch.allclose(px.mean_image.double(), f.mean(0), atol=1e-6)
    assert np.allclose(px.std, [float((f - f.mean(0)).square().mean().sqrt())] * 3)
    data = load_data("synthetic:64x3x8x8:4", normalize="pixel", augment="none")
    z, _ = collect(data.eval_batches("train", 64, CPU))
    assert abs(z.mean()) < 1e-5 and abs(z.std(unbiased=False) - 1) < 1e-4
    assert data.mean == pytest.approx(data.mean_image.mean((1, 2)).tolist())
    # Given statistics (a checkpoint's, when evaluating it) replace the measured ones.
    data = load_data("synthetic:64x3x8x8:4", normalize="pixel", augment="none",
                     stats=N.Stats([0.5] * 3, [0.25] * 3))
    assert data.mean_image is None
    z, _ = next(data.eval_batches("train", 64, CPU))
    raw = data._arrays["train"][0].float() / 255
    assert torch.allclose(z, (raw - 0.5) / 0.25, atol=1e-5)


def test_imagenet_augment_and_resizing_for_in_memory_data():
    data = load_data("synthetic:32x3x16x16:4", augment="imagenet", image_size=24)
    assert data.input_size == (3, 24, 24)
    a, b = (next(data.train_batches(0, 8, CPU))[0] for _ in range(2))
    assert a.shape == (8, 3, 24, 24) and torch.equal(a, b) and torch.isfinite(a).all()
    plain = load_data("synthetic:32x3x16x16:4", augment="none", image_size=24)
    assert not torch.allclose(a, next(plain.train_batches(0, 8, CPU))[0])
    x, _ = next(plain.eval_batches("test", 4, CPU, resize=40))
    assert x.shape == (4, 3, 40, 40)


# ---------------------------------------------------------------------------- image folders
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imgs") / "set")


def test_imagefolder_modes_sizes_and_corrupt_file(folder, capsys):
    data = load_data(f"imagefolder:{folder}", image_size=32, workers=0, augment="imagenet")
    broken = str(folder / "train" / "cat" / "broken.png")
    assert capsys.readouterr().err.splitlines() == [  # one `warning:` line, no source line
        f"warning: cannot read image '{broken}': cannot identify image file '{broken}' "
        "(skipped)"]
    assert data.skipped == [broken]
    assert data.class_names == ["cat", "dog"] and data.in_chans == 3
    assert data.input_size == (3, 32, 32) and data.splits == ("train", "val", "test")
    assert data.num_examples("train") == data.num_examples("val") == 10
    batches = list(data.train_batches(0, 4, CPU, seed=1))
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 32, 32)
    x, y = collect(data.eval_batches("val", 3, CPU))
    assert x.shape == (10, 3, 32, 32) and sorted(y.tolist()) == [0] * 5 + [1] * 5
    big, _ = next(data.eval_batches("val", 3, CPU, resize=48))
    assert big.shape == (1, 3, 48, 64)  # the whole 40x30 image (multi-scale test), then a 20x50


def test_imagefolder_is_deterministic_across_workers_and_resume(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = load_data(f"imagefolder:{folder}", image_size=24, workers=0, augment="imagenet")
        parallel = load_data(f"imagefolder:{folder}", image_size=24, workers=2,
                             augment="imagenet")
    assert serial.mean == parallel.mean
    state = torch.get_rng_state()
    full = list(serial.train_batches(3, 4, CPU, seed=9))
    assert torch.equal(torch.get_rng_state(), state)
    rest = list(parallel.train_batches(3, 4, CPU, seed=9, start_step=1))
    assert torch.equal(rest[0][0], full[1][0]) and torch.equal(rest[0][1], full[1][1])
    shard = next(serial.train_batches(3, 4, CPU, seed=9, rank=1, world_size=2))
    assert torch.equal(shard[0], full[0][0][2:])


def test_imagefolder_preprocess_matches_evaluation(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_data(f"imagefolder:{folder}", image_size=32, workers=0, normalize="pixel")
    x, _ = collect(data.eval_batches("val", 10, CPU))
    files = sorted((folder / "val" / "cat").iterdir())
    images = [open_image(p) for p in files]
    assert {im.mode for im in images} == {"RGB", "L", "RGBA", "P", "I;16"}
    got = preprocess(images, data.in_chans, data.input_size, data.mean_image, data.std,
                     crop_fraction=data.crop_fraction)
    assert torch.allclose(got, x[:5], atol=1e-5)


def test_imagefolder_grayscale_and_holdout(tmp_path):
    root = make_folder(tmp_path / "g", modes=("L", "I;16", "L"), corrupt=False, splits=("train",))
    data = load_data(f"imagefolder:{root}", image_size=16, workers=0, val_split=2)
    assert data.in_chans == 1 and data.splits == ("train", "val", "test")
    assert data.num_examples("train") == 4 and data.num_examples("test") == 2
    assert torch.equal(collect(data.eval_batches("val", 8, CPU))[0],
                       collect(data.eval_batches("test", 8, CPU))[0])
    only_train = load_data(f"imagefolder:{root}", image_size=16, workers=0)
    assert only_train.splits == ("train",)
    with pytest.raises(UserError, match=r"dataset imagefolder:.* has no 'test' split \(splits: "
                                        r"train\)"):
        only_train.eval_batches("test", 4, CPU)


def test_imagefolder_test_folder_is_the_test_split(tmp_path, capsys):
    """train/ + test/ (torchvision's and Kaggle's layout): test/ is the test split, its
    unreadable files warned about like train/'s; val/ is the validation split when present,
    else the hold-out from train/; other top-level folders get one note."""
    root = make_folder(tmp_path / "k", modes=("RGB", "L", "RGB", "L"), corrupt=False,
                       splits=("train", "test"))
    broken = root / "test" / "dog" / "broken.png"
    broken.write_bytes(b"not a png")
    (root / "extras").mkdir()
    (root / "labels").mkdir()
    (root / ".cache").mkdir()  # hidden: not worth a note
    data = load_data(f"imagefolder:{root}", image_size=16, workers=0, val_split=None)
    assert capsys.readouterr().err.splitlines() == [
        f"note: image folder '{root}': extras/, labels/ ignored (it reads train/, val/, test/)",
        f"warning: cannot read image '{broken}': cannot identify image file '{broken}' "
        "(skipped)"]
    assert data.splits == ("train", "val", "test") and not data.same_val_test
    assert data.held_out == 2 and data.num_examples("train") == 6
    assert data.num_examples("test") == 8 and data.skipped == [str(broken)]
    test_files = {p for p, _ in data._items["test"]}
    assert test_files == {str(p) for p in (root / "test").rglob("*.*")} - {str(broken)}
    make_folder(root, modes=("RGB", "L"), corrupt=False, splits=("val",))
    with_val = load_data(f"imagefolder:{root}", image_size=16, workers=0, val_split=None)
    assert with_val.held_out == 0 and with_val.num_examples("train") == 8
    assert (with_val.num_examples("val"), with_val.num_examples("test")) == (4, 8)
    assert {p for p, _ in with_val._items["test"]} == test_files
    capsys.readouterr()
    held = load_data(f"imagefolder:{root}", image_size=16, workers=0, val_split=2)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"warning: --val-split 2 holds out the validation images from train/: {root}/val/ is "
        "not used")
    assert held.num_examples("val") == 2 and held.num_examples("test") == 8
    (root / "test" / "bird").mkdir()
    (root / "test" / "bird" / "0.png").write_bytes((root / "test" / "cat" / "0.png").read_bytes())
    with pytest.raises(UserError, match=f"^'{root}/test' has classes that train/ lacks: bird$"):
        load_data(f"imagefolder:{root}", image_size=16, workers=0)


def test_imagefolder_errors(tmp_path):
    cases = [(tmp_path / "nowhere", "image folder '{p}' not found"),
             (tmp_path / "flat", "image folder '{p}' has no train/ subfolder (expected "
                                 "train/<class>/<image files>)"),
             (tmp_path / "classes", "image folder '{p}' has no train/ subfolder (expected "
                                    "train/<class>/<image files>); its subfolders ant/, bee/, "
                                    "cat/, ... look like classes: move them into '{p}/train/'"),
             (tmp_path / "noclass", "'{p}/train' has no class subfolders (expected "
                                    "train/<class>/<images>)"),
             (tmp_path / "empty", "no readable images in '{p}/train'")]
    (tmp_path / "flat").mkdir()
    for c in ("ant", "bee", "cat", "dog"):
        (tmp_path / "classes" / c).mkdir(parents=True)
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    for path, message in cases:
        with pytest.raises(UserError) as err:
            load_data(f"imagefolder:{path}")
        assert str(err.value) == message.format(p=path)


def test_open_image_and_channel_conversion(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(UserError, match=f"cannot read image '{text}'"):
        open_image(text)
    with pytest.raises(UserError, match="image '.*missing.png' not found"):
        open_image(tmp_path / "missing.png")
    deep = Image.fromarray(np.array([[0, 65535], [257 * 128, 257]], dtype=np.uint16))
    assert np.asarray(to_channels(deep, 1)).tolist() == [[0, 255], [128, 1]]
    pal = Image.new("P", (4, 4))
    pal.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_channels(pal, 3).mode == "RGB"
    out = preprocess([Image.new("RGBA", (50, 20)), Image.new("L", (9, 9))], 1, (1, 8, 8),
                     [0.5], [0.25])
    assert out.shape == (2, 1, 8, 8) and torch.allclose(out, torch.full_like(out, -2.0))


def test_file_that_breaks_after_the_scan_is_replaced_with_a_warning(tmp_path, capsys):
    root = make_folder(tmp_path / "t", modes=("RGB", "L"), corrupt=False, splits=("train",))
    victim = root / "train" / "cat" / "0.png"
    victim.write_bytes(victim.read_bytes()[:60])  # the header still parses; the pixels do not
    message = f"warning: cannot read image '{victim}'.*using the next image instead"
    data = load_data(f"imagefolder:{root}", image_size=16, workers=0, augment="none")
    assert re.fullmatch(message, capsys.readouterr().err.strip())  # statistics sample
    x, y = collect(data.eval_batches("train", 4, CPU))
    assert re.fullmatch(message, capsys.readouterr().err.strip())
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]


# ------------------------------------------------------------- multi-scale test on image folders
def aspect_folder(root: Path) -> Path:
    """val/ images of several aspect ratios (W x H), in order: a/0..a/3, b/0..b/2."""
    rng = np.random.default_rng(3)
    sizes = {"a": [(40, 30), (41, 30), (30, 40), (36, 36)], "b": [(50, 20), (40, 30), (41, 30)]}
    for split in ("train", "val"):
        for cls, whs in sizes.items():
            (root / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate(whs):
                rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(rgb).save(root / split / cls / f"{i}.png")
    return root


def test_multiscale_test_sees_whole_images_and_averages_scores_per_example(tmp_path):
    """Section 3.4's fully-convolutional multi-scale test on an image folder: at each scale the
    net sees the whole image (shorter side = scale, aspect kept, no crop), and each example's
    softmax scores are averaged over the scales even though batches are cut differently."""
    from torchvision.transforms.v2 import functional as TF

    from reslab.engine.tta import multiscale_logits

    root = aspect_folder(tmp_path / "aspect")
    data = load_data(f"imagefolder:{root}", image_size=16, workers=0, augment="none")
    files = [p for p, _ in data._items["val"]]
    labels = [label for _, label in data._items["val"]]
    assert labels == [0, 0, 0, 0, 1, 1, 1]

    def whole(path, s):  # the reference: PIL's whole image, shorter side s, normalised
        img = TF.pil_to_tensor(TF.resize(open_image(path).convert("RGB"), [s], antialias=True))
        return data.normalize(img[None].float() / 255)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    scales = [15, 30]
    scored = list(multiscale_logits(net, [data.eval_batches("val", 3, CPU, resize=s)
                                          for s in scales]))
    # Spans of 3 images are split into runs of one shape: at 15 the 40x30 and 41x30 images are
    # both 15x20 (one run), at 30 they are 30x40 and 30x41 (two runs). Nothing is cropped.
    at15 = [(2, 3, 15, 20), (1, 3, 20, 15), (1, 3, 15, 15), (1, 3, 15, 37), (1, 3, 15, 20),
            (1, 3, 15, 20)]
    at30 = [(1, 3, 30, 40), (1, 3, 30, 41), (1, 3, 40, 30), (1, 3, 30, 30), (1, 3, 30, 75),
            (1, 3, 30, 40), (1, 3, 30, 41)]
    assert [x for x in seen if min(x[2:]) == 15] == at15
    assert [x for x in seen if min(x[2:]) == 30] == at30 and len(seen) == len(at15) + len(at30)
    # The batches are the whole images, exactly as PIL resizes them, labels in order.
    for s in scales:
        batches = list(data.eval_batches("val", 3, CPU, resize=s))
        assert torch.cat([y for _, y in batches]).tolist() == labels
        flat = [im[None] for x, _ in batches for im in x]
        assert len(flat) == len(files)
        for got, path in zip(flat, files):
            torch.testing.assert_close(got, whole(path, s), atol=1e-5, rtol=0)
    # Per example: log of the mean over scales of softmax(net(whole image)), labels in order.
    logits = torch.cat([z for z, _ in scored])
    assert torch.cat([t for _, t in scored]).tolist() == labels
    assert [len(t) for _, t in scored] == [x[0] for x in at15]  # the first scale's batches
    with torch.no_grad():
        manual = torch.stack([torch.stack([torch.softmax(net(whole(p, s)), 1)[0] for s in scales])
                              .mean(0) for p in files])
    torch.testing.assert_close(logits.exp(), manual, atol=1e-5, rtol=0)


def test_per_pixel_mean_on_whole_images_is_centred_not_stretched():
    mean = torch.rand(3, 8, 8)
    norm = A.Normalizer(mean, [0.5] * 3)
    x = torch.rand(2, 3, 16, 23)  # a whole image of the multi-scale test, shorter side 16
    square = torch.nn.functional.interpolate(mean[None], size=(16, 16), mode="bilinear",
                                             align_corners=False)
    expect = torch.cat([square[..., :1].expand(-1, -1, -1, 4), square,
                        square[..., -1:].expand(-1, -1, -1, 3)], dim=-1)  # 7 columns: 4 + 3
    torch.testing.assert_close(norm(x), (x - expect) / 0.5)
    # The centre square of a whole image is normalised as a square image of its size is (the
    # 10-crop's 256 x 256 centre), so cutting it before or after normalising agrees.
    torch.testing.assert_close(norm(x)[..., 4:20], norm(x[..., 4:20].contiguous()))
    for w in range(17, 40):  # the cache of resized means stays small
        norm(torch.rand(1, 3, 16, w))
    assert len(norm._cache) <= 9


def test_folder_per_pixel_mean_is_a_crop_size_image_used_by_train_and_eval(tmp_path):
    """paper-imagenet's normalize="pixel" on an image folder: the mean image is measured at the
    crop size on the evaluation geometry of the training images, and both the scale-augmented
    training crops and the evaluation crops subtract exactly it (divided by one global std)."""
    from reslab.data.images import FOLDER_CROP_FRACTION, eval_geometry, pil_to_uint8

    root = aspect_folder(tmp_path / "px")
    data = load_data(f"imagefolder:{root}", image_size=16, workers=0, normalize="pixel",
                     augment="imagenet")

    def raw(split):
        return torch.stack([pil_to_uint8(eval_geometry(to_channels(open_image(p), 3), (16, 16),
                                                       FOLDER_CROP_FRACTION))
                            for p, _ in data._items[split]]).double() / 255

    train = raw("train")
    assert data.mean_image.shape == (3, 16, 16)
    torch.testing.assert_close(data.mean_image.double(), train.mean(0), atol=1e-6, rtol=0)
    std = float((train - train.mean(0)).square().mean().sqrt())
    assert data.std == pytest.approx([std] * 3)
    assert data.mean_image.std() > 0.01  # a real image, not a constant
    x_eval, _ = collect(data.eval_batches("val", 4, CPU))
    torch.testing.assert_close(x_eval.double(), (raw("val") - data.mean_image.double()) / std,
                               atol=1e-5, rtol=0)
    # Train: the same crops with the mean image replaced by zeros differ by exactly mean/std.
    mean_image = data.mean_image
    x_train = next(data.train_batches(0, 4, CPU, seed=1))[0]
    zero = load_data(f"imagefolder:{root}", image_size=16, workers=0, normalize="pixel",
                     augment="imagenet",
                     stats=N.Stats(data.mean, data.std, torch.zeros(3, 16, 16)))
    x_zero = next(zero.train_batches(0, 4, CPU, seed=1))[0]
    assert x_train.shape == (4, 3, 16, 16)
    torch.testing.assert_close(x_zero - x_train, (mean_image / std).expand(4, -1, -1, -1),
                               atol=1e-5, rtol=0)


def test_a_small_folder_is_decoded_once_and_gives_the_same_batches(tmp_path, monkeypatch):
    """A split that fits in memory is decoded once and kept: every epoch and every evaluation
    then reads the kept pixels, identical to a fresh decode (a larger split is decoded each
    time, as before)."""
    from reslab.data import folders

    root = make_folder(tmp_path / "k", modes=("RGB", "L", "RGB"), corrupt=False)
    opened = []
    real_open = folders.open_image
    monkeypatch.setattr(folders, "open_image", lambda p: opened.append(p) or real_open(p))

    def run(cache_bytes):
        monkeypatch.setattr(folders, "CACHE_BYTES", cache_bytes)
        opened.clear()
        data = load_data(f"imagefolder:{root}", image_size=16, workers=0, pad=2)
        start = len(opened)  # the statistics' sample is decoded at load time either way
        got = [collect(data.train_batches(e, 2, "cpu", seed=5)) for e in range(3)]
        got.append(collect(data.eval_batches("val", 4, "cpu")))
        got.append(collect(data.eval_batches("val", 4, "cpu")))
        return got, len(opened) - start

    kept, kept_decodes = run(folders.CACHE_BYTES)
    fresh, fresh_decodes = run(0)
    assert (kept_decodes, fresh_decodes) == (6 + 6, 3 * 6 + 2 * 6)
    for (xk, yk), (xf, yf) in zip(kept, fresh):
        assert torch.equal(xk, xf) and torch.equal(yk, yf)
