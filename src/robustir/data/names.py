"""Named datasets: each name maps to files under the data root, or to sample photographs shipped inside the installed
scikit-image package (no data root needed); a user's own folder works wherever a name does."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robustir.data.root import data_root
from robustir.errors import RobustirError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Image files (PNG/JPEG/TIFF/BMP) in `folder`, sorted by name; raises if the folder is missing or has none."""
    path = Path(folder)
    if not path.is_dir():
        raise RobustirError(f"image folder {str(path)!r} does not exist or is not a folder")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in path.glob(pattern)
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise RobustirError(f"image folder {str(path)!r} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def check_image_paths(paths: object) -> list[Path]:
    """Validate an explicit list of image files (non-empty, each an existing file with an image suffix)."""
    if isinstance(paths, (str, os.PathLike)) or not hasattr(paths, "__iter__"):
        raise RobustirError(f"expected a list of image paths, got {type(paths).__name__}")
    out = [Path(p) for p in paths]  # type: ignore[union-attr]
    if not out:
        raise RobustirError("expected a non-empty list of image paths, got an empty list")
    for p in out:
        if not p.is_file():
            raise RobustirError(f"image file {str(p)!r} does not exist")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise RobustirError(f"image file {str(p)!r}: expected one of {', '.join(IMAGE_SUFFIXES)}")
    return out


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset: how to find its files (under the data root unless built in), its channel count, default size."""

    name: str
    description: str
    files: Callable[[Path], list[Path]]  # given the folder it lives in: the data root, or `home()` if built in
    channels: int  # loaders convert every image to this many channels unless the caller asks otherwise
    size: int | None = None  # images are resized to size x size unless the caller asks otherwise
    home: Callable[[], Path] | None = None  # built-in datasets: the installed package folder holding the files


def skimage_data_dir() -> Path:
    """The folder of sample images inside the installed scikit-image package (read in place, never downloaded)."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def _folder(*parts: str) -> Callable[[Path], list[Path]]:
    def files(root: Path) -> list[Path]:
        return list_images(root.joinpath(*parts))
    return files


def _named(*names: str) -> Callable[[Path], list[Path]]:
    def files(folder: Path) -> list[Path]:
        paths = sorted(folder / n for n in names)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise RobustirError(f"folder {str(folder)!r} has no {', '.join(missing)}")
        return paths
    return files


def _bsds_train400(root: Path) -> list[Path]:
    # train + test: the 400 colour images disjoint from BSD68/CBSD68 (all 68 of those are in val).
    return list_images(root / "BSDS500" / "train") + list_images(root / "BSDS500" / "test")


def _bsds_val_minus_cbsd68(root: Path) -> list[Path]:
    held_out = {p.stem for p in list_images(root / "CBSD68")}
    return [p for p in list_images(root / "BSDS500" / "val") if p.stem not in held_out]


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("set12", "Set12: 12 gray test images (256x256 and 512x512)", _folder("Set12"), 1),
    DatasetInfo("bsd68", "BSD68: 68 gray Berkeley test images (321x481)", _folder("BSD68"), 1),
    DatasetInfo("cbsd68", "CBSD68: the 68 Berkeley test images in colour", _folder("CBSD68"), 3),
    DatasetInfo("train400", "Train400: 400 gray 180x180 DnCNN training images", _folder("Train400"), 1),
    DatasetInfo("bsds500-train", "BSDS500 train split: 200 colour JPEGs", _folder("BSDS500", "train"), 3),
    DatasetInfo("bsds500-val", "BSDS500 val split: 100 colour JPEGs (contains all of CBSD68)",
                _folder("BSDS500", "val"), 3),
    DatasetInfo("bsds500-test", "BSDS500 test split: 200 colour JPEGs", _folder("BSDS500", "test"), 3),
    DatasetInfo("bsds400", "BSDS500 train+test: 400 colour training images, disjoint from CBSD68", _bsds_train400, 3),
    DatasetInfo("bsds500-val32", "BSDS500 val minus the 68 CBSD68 images: 32 colour validation images",
                _bsds_val_minus_cbsd68, 3),
    DatasetInfo("celeba_hq", "CelebA-HQ faces (1024x1024 RGB), resized to 256x256 by default",
                _folder("faces", "celeba_hq"), 3, size=256),
    # natural photographs only: no synthetic, scanned-text, microscopy, motion-blurred or mostly-black images
    DatasetInfo("skimage-gray", "built in: scikit-image's gray photos camera, coins, moon, brick, grass, gravel",
                _named("camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png"), 1,
                home=skimage_data_dir),
    DatasetInfo("skimage-color", "built in: scikit-image's colour photos astronaut, chelsea, coffee, motorcycle, "
                "rocket", _named("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"), 3,
                home=skimage_data_dir),
)}

_ALIASES = {"cbsd432": "bsds400", "bsds500-train400": "bsds400", "celeba-hq": "celeba_hq", "celebahq": "celeba_hq",
            "skimage-colour": "skimage-color", "skimage-rgb": "skimage-color"}


def list_datasets() -> dict[str, DatasetInfo]:
    """All named datasets by name."""
    return dict(DATASETS)


def dataset_info(name: str) -> DatasetInfo | None:
    """The named dataset `name` (case-insensitive, a few aliases), or None if it is not a known name."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return DATASETS.get(key)


def resolve_dataset(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """Image files of a named dataset (under the data root, or built in) or of a user folder.

    Args:
        name_or_path: a name from `list_datasets()` (e.g. 'set12', 'cbsd68', 'skimage-gray') or an existing folder.
        root: data root override (`--data-root`); else `$ROBUSTIR_DATA` or `../shared/data`. Unused by built-in
            datasets.

    Returns:
        The sorted list of image paths.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return list_images(path)
    info = dataset_info(text)
    if info is None:
        if os.sep in text or text.startswith("."):
            raise RobustirError(f"dataset folder {text!r} does not exist")
        raise RobustirError(f"unknown dataset {text!r}: expected an existing folder of images or one of "
                            f"{', '.join(DATASETS)}")
    base = info.home() if info.home is not None else data_root(root)
    assert base is not None
    try:
        return info.files(base)
    except RobustirError as exc:
        where = "in its installed package folder" if info.home is not None else "under data root"
        raise RobustirError(f"dataset {info.name!r} not found {where} {str(base)!r}: {exc}") from None
