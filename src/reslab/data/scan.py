"""Image folders scanned: the train/ (val/, test/) layout, class folders, and every file's
header probed (in threads) so unreadable files are left out before training starts."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, note, warn
from ..limits import short_text
from .images import GRAY_MODES, probe_image


@dataclass
class FolderSource:
    """An image folder: (path, label) lists; val and test are None without their folder."""
    name: str
    class_names: list[str]
    in_chans: int
    train: list[tuple[str, int]]
    val: list[tuple[str, int]] | None
    test: list[tuple[str, int]] | None = None
    skipped: list[str] = field(default_factory=list)
    # every readable file's header: its mode and (width, height), for the start-up note
    headers: dict[str, tuple[str, tuple[int, int]]] = field(default_factory=dict)


def _list_files(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    items = []
    for label, cls in enumerate(classes):
        for path in sorted((folder / cls).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                items.append((str(path), label))
    return items


def _probe_all(items: list[tuple[str, int]], workers: int,
               headers: dict | None = None) -> tuple[list[tuple[str, int]], set[str], list[str]]:
    """Reads every file's header (threads: this is I/O); names the first unreadable files and
    says how many were skipped in all. headers, when given, receives each readable file's
    (mode, (width, height))."""
    def probe(item: tuple[str, int]) -> tuple[str, tuple[int, int]] | UserError:
        try:
            return probe_image(item[0])
        except UserError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(16, 2 * workers))) as pool:
        results = list(pool.map(probe, items))
    good, modes, skipped = [], set(), []
    for item, header in zip(items, results):
        if isinstance(header, UserError):
            if len(skipped) < NAMED_SKIPS:
                warn(f"{header} (skipped)")
            skipped.append(item[0])
        else:
            good.append(item)
            modes.add(header[0])
            if headers is not None:
                headers[item[0]] = header
    return good, modes, skipped


NAMED_SKIPS = 10  # unreadable files named one per line; the rest are counted


def _class_dirs(folder: Path) -> list[str]:
    """The class subfolders of folder, sorted; a name with a control character (a newline
    would break every one-name-per-line output) is refused, naming it escaped."""
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    odd = next((n for n in names if any(not c.isprintable() and c != " " for c in n)), None)
    if odd is not None:
        raise UserError(f"class folder {short_text(ascii(odd))} in '{folder}' has a control "
                        "character (such as a newline) in its name; rename it")
    return names


FOLDER_SPLITS = ("train", "val", "test")  # an image folder's top-level folders, in this order


def _other_dirs(root: Path) -> None:
    """One note naming the top-level folders that are not a split (a Kaggle set's extras, a
    flat class folder next to train/): they would otherwise be ignored silently."""
    others = sorted(d.name for d in root.iterdir()
                    if d.is_dir() and not d.name.startswith(".") and d.name not in FOLDER_SPLITS)
    if others:
        names = ", ".join(f"{short_text(ascii(n) if not n.isprintable() else n)}/"
                          for n in others[:5])
        note(f"image folder '{root}': {names}{' ...' if len(others) > 5 else ''} ignored "
             f"(it reads {', '.join(s + '/' for s in FOLDER_SPLITS)})")


def _scan_split(folder: Path, classes: list[str],
                workers: int) -> tuple[list[tuple[str, int]], set[str], list[str], int]:
    """An optional split folder (val/ or test/) read with train/'s classes and labels: (readable
    items, their modes, unreadable files, files found)."""
    found = _list_files(folder, classes)
    items, modes, skipped = _probe_all(found, workers)
    if not items:
        raise UserError(f"no readable images in '{folder}'")
    return items, modes, skipped, len(found)


def scan_folder(path: str, workers: int = 4) -> FolderSource:
    """PATH/train/<class>/* (and optional PATH/val/<class>/*, PATH/test/<class>/*), as
    torchvision's ImageFolder: classes are train/'s sorted subfolder names. 1 channel when every
    image is grayscale, else 3.

    A class folder without readable images is dropped with a warning naming it (a class with
    no examples would still count as an output of the model); fewer than 2 classes left is an
    error."""
    root = Path(path).expanduser()
    train_dir = root / "train"
    if not root.is_dir():
        raise UserError(f"image folder '{path}' not found")
    if not train_dir.is_dir():
        flat = _class_dirs(root)  # photos/<class>/ without train/: the usual first attempt
        hint = (f"; its subfolders {', '.join(c + '/' for c in flat[:3])}"
                f"{', ...' if len(flat) > 3 else ''} look like classes: move them into "
                f"'{root / 'train'}/'" if flat else "")
        raise UserError(f"image folder '{path}' has no train/ subfolder "
                        f"(expected train/<class>/<image files>){hint}")
    classes = _class_dirs(train_dir)
    if not classes:
        raise UserError(f"'{train_dir}' has no class subfolders (expected train/<class>/<images>)")
    _other_dirs(root)
    optional = [root / name for name in FOLDER_SPLITS[1:] if (root / name).is_dir()]
    for folder in optional:  # class names checked before the (long) reading of train/
        extra = sorted(set(_class_dirs(folder)) - set(classes))
        if extra:
            raise UserError(f"'{folder}' has classes that train/ lacks: {', '.join(extra)}")
    found = _list_files(train_dir, classes)
    headers: dict[str, tuple[str, tuple[int, int]]] = {}
    train, modes, skipped = _probe_all(found, workers, headers)
    if not train:
        raise UserError(f"no readable images in '{train_dir}'"
                        + (f" ({len(skipped)} unreadable files skipped)" if skipped else ""))
    kept = sorted({label for _, label in train})
    if len(kept) < len(classes):
        empty = [classes[i] for i in range(len(classes)) if i not in set(kept)]
        if len(kept) < 2:
            raise UserError(f"'{train_dir}' has readable images in {len(kept)} class folder"
                            f"{'s' if len(kept) != 1 else ''} only (empty: "
                            f"{', '.join(map(repr, empty[:5]))}); a classifier needs 2 or more")
        warn(f"class folder{'s' if len(empty) > 1 else ''} "
             f"{', '.join(map(repr, empty[:5]))}{' ...' if len(empty) > 5 else ''} in "
             f"'{train_dir}' {'hold' if len(empty) > 1 else 'holds'} no readable images: "
             f"dropped, {len(kept)} classes remain")
        relabel = {old: new for new, old in enumerate(kept)}
        classes = [classes[i] for i in kept]
        train = [(p, relabel[label]) for p, label in train]
    splits: dict[str, list[tuple[str, int]]] = {}
    total = len(found)
    for folder in optional:  # listed by the kept names: new labels
        items, split_modes, split_skipped, n = _scan_split(folder, classes, workers)
        splits[folder.name], total = items, total + n
        modes |= split_modes
        skipped += split_skipped
    if len(skipped) > 1:  # one file: its own line said it all
        warn(f"skipped {len(skipped):,} unreadable files of {total:,} in '{root}'"
             + (f" (the first {NAMED_SKIPS} named above)" if len(skipped) > NAMED_SKIPS else ""))
    in_chans = 1 if modes <= GRAY_MODES else 3
    return FolderSource(f"imagefolder:{path}", classes, in_chans, train, splits.get("val"),
                        splits.get("test"), skipped, headers)
