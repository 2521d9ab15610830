"""Named datasets, ImageFolder, DegradedImages, PairedFolder and RandomPatches on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from robustir.data import (DatasetInfo, DegradedImages, ImageFolder, PairedFolder, RandomPatches, convert_channels,
                           dihedral, list_datasets, list_images, load_image, resolve_dataset, save_image)
from robustir.data.degrade import blind_noise, blur_noise, noise
from robustir.errors import RobustirError


def _write_images(folder: Path, names: list[str], shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrs = []
    for name in names:
        arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(arr).save(folder / name)
        arrs.append(arr)
    return arrs


# ------------------------------------------------------------------------------------------------- named datasets

def test_named_datasets_resolve_through_the_data_root(data_root: Path) -> None:
    expected = {"set12": 12, "bsd68": 68, "cbsd68": 68, "train400": 400, "bsds500-train": 200, "bsds500-val": 100,
                "bsds500-test": 200, "bsds400": 400, "bsds500-val32": 32, "celeba_hq": 10, "skimage-gray": 6,
                "skimage-color": 5}
    assert set(expected) == set(list_datasets())
    for name, count in expected.items():
        assert len(resolve_dataset(name, data_root)) == count, name
    cbsd = {p.stem for p in resolve_dataset("cbsd68", data_root)}
    assert not cbsd & {p.stem for p in resolve_dataset("bsds400", data_root)}
    assert not cbsd & {p.stem for p in resolve_dataset("bsds500-val32", data_root)}
    assert resolve_dataset("Set12", data_root) == resolve_dataset("set12", data_root)  # case-insensitive
    assert resolve_dataset("CBSD432", data_root) == resolve_dataset("bsds400", data_root)  # the usual alias


def test_set12_folder_and_celeba_resize(data_root: Path) -> None:
    ds = ImageFolder("set12", root=data_root)
    assert ds.names[0] == "01.png" and len(ds) == 12
    item = ds[0]
    assert item["target"].shape == (1, 256, 256) and item["name"] == "01.png"
    torch.testing.assert_close(item["target"], load_image(data_root / "Set12" / "01.png"))
    assert ds[11]["target"].shape == (1, 512, 512)
    # the user's folder behaves exactly like the name
    user = ImageFolder(data_root / "Set12")
    torch.testing.assert_close(user[3]["target"], ds[3]["target"])
    faces = ImageFolder("celeba_hq", root=data_root, limit=2)
    assert len(faces) == 2 and faces[0]["target"].shape == (3, 256, 256)
    faces64 = ImageFolder("celeba_hq", root=data_root, size=64, limit=1)
    x = faces64[0]["target"]
    assert x.shape == (3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    # antialiased downscaling keeps the mean of the 1024x1024 face
    full = load_image(faces64.paths[0])
    assert abs(float(x.mean()) - float(full.mean())) < 2e-3


@pytest.fixture
def no_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$ROBUSTIR_DATA points to an empty folder and the cwd has no ../shared/data."""
    empty = tmp_path / "empty_root"
    (empty / "cwd").mkdir(parents=True)
    monkeypatch.setenv("ROBUSTIR_DATA", str(empty))
    monkeypatch.chdir(empty / "cwd")
    return empty


def test_builtin_skimage_datasets_need_no_data_root(no_data_root: Path) -> None:
    from skimage import data

    gray, color = resolve_dataset("skimage-gray"), resolve_dataset("skimage-color")
    assert [p.stem for p in gray] == ["brick", "camera", "coins", "grass", "gravel", "moon"]
    assert [p.stem for p in color] == ["astronaut", "chelsea", "coffee", "motorcycle_left", "rocket"]
    assert resolve_dataset("skimage-gray", no_data_root) == gray  # a data root is ignored, not needed
    assert resolve_dataset("SKIMAGE-COLOUR") == color
    assert all(p.parent == Path(data.__file__).parent for p in gray + color)  # read in place, nothing downloaded
    with pytest.raises(RobustirError, match="dataset 'set12' not found under data root"):
        resolve_dataset("set12")  # the empty data root still counts for the others
    for name, channels in (("skimage-gray", 1), ("skimage-color", 3)):
        ds = ImageFolder(name)
        assert ds.channels == channels and len(ds) == len(resolve_dataset(name))
        for i in range(len(ds)):
            x = ds[i]["target"]
            assert x.shape[0] == channels and x.dtype == torch.float32 and 0 <= float(x.min()) < float(x.max()) <= 1
    # pixels as scikit-image's own loaders give them
    torch.testing.assert_close(ImageFolder("skimage-gray")[1]["target"][0],
                               torch.from_numpy(data.camera().astype(np.float32) / 255), rtol=0, atol=0)
    rocket = torch.from_numpy(data.rocket().astype(np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(ImageFolder("skimage-color")[4]["target"], rocket, rtol=0, atol=0)


def test_named_dataset_channels_convert_colour_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from robustir.data import names
    from robustir.data.names import _named, skimage_data_dir

    info = DatasetInfo("luma", "colour photos as gray", _named("astronaut.png", "chelsea.png"), 1,
                       home=skimage_data_dir)
    monkeypatch.setitem(names.DATASETS, "luma", info)
    ds = ImageFolder("luma")
    for i, path in enumerate(ds.paths):
        x = ds[i]["target"]
        assert x.shape[0] == 1
        torch.testing.assert_close(x, convert_channels(load_image(path), 1))
        pil = np.asarray(Image.open(path).convert("L"), np.float32) / 255  # Pillow's ITU-R 601 luma, rounded
        assert float((x[0] - torch.from_numpy(pil)).abs().max()) <= 0.5 / 255 + 1e-6
    assert ImageFolder("luma", channels=3)[0]["target"].shape[0] == 3  # an explicit request wins
    assert ImageFolder("skimage-gray", channels=3, limit=1)[0]["target"].shape == (3, 512, 512)
    broken = DatasetInfo("broken", "missing files", _named("nope.png"), 1, home=lambda: tmp_path)
    monkeypatch.setitem(names.DATASETS, "broken", broken)
    with pytest.raises(RobustirError, match="dataset 'broken' not found in its installed package folder.*nope.png"):
        resolve_dataset("broken")


def test_builtin_datasets_in_degraded_images_patches_and_experiments(no_data_root: Path) -> None:
    from robustir.experiments.execute import load_dataset_images
    from robustir.experiments.spec import DataEntry

    ds = DegradedImages("skimage-color", noise(25), seed=0, size=32)
    item = ds[2]
    assert item["input"].shape == item["target"].shape == (3, 32, 32) and item["name"] == "coffee.png"
    patches = RandomPatches(ImageFolder("skimage-gray", limit=2), patch_size=16, patches_per_image=2, seed=0)
    assert [patches[i]["target"].shape for i in range(4)] == [(1, 16, 16)] * 4
    images = load_dataset_images(DataEntry("g", "skimage-gray", limit=3, crop=24))
    assert [name for name, _, _ in images] == ["brick", "camera", "coins"]
    assert all(x.shape == (1, 24, 24) and y is None for _, x, y in images)  # synthetic: degraded on the fly


def test_unknown_names_list_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(RobustirError, match="unknown dataset 'set13'.*set12.*cbsd68.*celeba_hq"):
        resolve_dataset("set13", tmp_path)
    with pytest.raises(RobustirError, match="dataset 'set12' not found under data root"):
        resolve_dataset("set12", tmp_path)  # empty data root
    with pytest.raises(RobustirError, match="does not exist"):
        resolve_dataset("./no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustirError, match="contains no images"):
        list_images(tmp_path / "empty")


def test_image_folder_user_folder_channels_and_list(tmp_path: Path) -> None:
    arrs = _write_images(tmp_path / "imgs", ["b.png", "a.png"], (10, 12, 3))
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    ds = ImageFolder(tmp_path / "imgs")
    assert ds.names == ["a.png", "b.png"]
    torch.testing.assert_close(ds[0]["target"], torch.from_numpy(arrs[1] / 255.0).float().permute(2, 0, 1))
    gray = ImageFolder(tmp_path / "imgs", channels=1)[0]["target"]
    pil_gray = np.asarray(Image.fromarray(arrs[1]).convert("L"), np.float32) / 255.0  # Pillow rounds to uint8
    assert gray.shape == (1, 10, 12) and float((gray[0] - torch.from_numpy(pil_gray)).abs().max()) <= 0.5 / 255 + 1e-6
    explicit = ImageFolder([tmp_path / "imgs" / "b.png"], channels=3)
    assert len(explicit) == 1 and explicit.names == ["b.png"]
    with pytest.raises(RobustirError, match="channels"):
        ImageFolder(tmp_path / "imgs", channels=2)
    with pytest.raises(RobustirError, match="missing.png"):
        ImageFolder([tmp_path / "missing.png"])
    with pytest.raises(IndexError):
        ds[5]


# ------------------------------------------------------------------------------------------------- DegradedImages

def test_degraded_images_are_seeded_per_index(tmp_path: Path) -> None:
    _write_images(tmp_path / "c", [f"{i}.png" for i in range(4)], (16, 16))
    ds = DegradedImages(tmp_path / "c", noise(25), seed=7)
    forward = [ds[i]["input"] for i in range(4)]
    backward = [ds[i]["input"] for i in reversed(range(4))][::-1]
    for a, b in zip(forward, backward):
        assert torch.equal(a, b)
    assert not torch.equal(forward[0] - ds[0]["target"], forward[1] - ds[1]["target"])
    other_seed = DegradedImages(tmp_path / "c", noise(25), seed=8)
    assert not torch.equal(other_seed[0]["input"], forward[0])
    resid = torch.stack([ds[i]["input"] - ds[i]["target"] for i in range(4)])
    assert abs(float(resid.std()) * 255 - 25) < 2.0  # 1024 samples: the level is right
    assert float(ds[0]["sigma"]) == 25
    # identical through a multi-process-free DataLoader with shuffling
    batches = list(DataLoader(ds, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0)))
    for batch in batches:
        for name, y in zip(batch["name"], batch["input"]):
            assert torch.equal(y, forward[ds.clean.names.index(name)])


def test_degraded_images_blur_noise_and_blind(tmp_path: Path) -> None:
    from robustir.degradations import blur

    _write_images(tmp_path / "c", ["0.png", "1.png"], (20, 18, 3))
    k = torch.zeros(5, 5)
    k[2, :] = 0.2
    ds = DegradedImages(tmp_path / "c", blur_noise(k, 0.0), seed=0)
    item = ds[1]
    torch.testing.assert_close(item["input"], blur(item["target"][None], k)[0])
    assert torch.equal(item["kernel"], k)
    blind = DegradedImages(tmp_path / "c", blind_noise(0, 55), seed=1)
    levels = [float(blind[i]["sigma"]) for i in range(2)]
    assert all(0 <= s <= 55 for s in levels) and levels[0] != levels[1]
    assert levels == [float(blind[i]["sigma"]) for i in range(2)]


def test_degraded_images_bad_degradation(tmp_path: Path) -> None:
    _write_images(tmp_path / "c", ["0.png"], (8, 8))
    with pytest.raises(RobustirError, match="callable"):
        DegradedImages(tmp_path / "c", "noise")  # type: ignore[arg-type]
    with pytest.raises(RobustirError, match="degradation returned"):
        DegradedImages(tmp_path / "c", lambda x, g: x[..., :4])[0]
    with pytest.raises(RobustirError, match="'input'"):
        DegradedImages(tmp_path / "c", lambda x, g: {"y": x})[0]
    with pytest.raises(RobustirError, match="sigma"):
        noise(-1)


# ------------------------------------------------------------------------------------------------- PairedFolder

def _gopro(root: Path) -> None:
    for split, seqs in (("train", ["GOPR0372_07_00", "GOPR0374_11_00"]), ("test", ["GOPR0384_11_00"])):
        for j, seq in enumerate(seqs):
            names = [f"{i:06d}.png" for i in range(2)]
            _write_images(root / split / seq / "blur", names, (12, 14, 3), seed=10 + j)
            _write_images(root / split / seq / "sharp", names, (12, 14, 3), seed=20 + j)


def test_paired_gopro_layout(tmp_path: Path) -> None:
    _gopro(tmp_path / "GoPro")
    ds = PairedFolder(tmp_path / "GoPro", split="train")
    assert ds.layout == "gopro" and len(ds) == 4
    assert ds.names[2] == "GOPR0374_11_00/000000.png"
    item = ds[2]
    torch.testing.assert_close(item["input"], load_image(tmp_path / "GoPro/train/GOPR0374_11_00/blur/000000.png"))
    torch.testing.assert_close(item["target"], load_image(tmp_path / "GoPro/train/GOPR0374_11_00/sharp/000000.png"))
    assert len(PairedFolder(tmp_path / "GoPro" / "test")) == 2  # a split folder directly
    with pytest.raises(RobustirError, match="no split 'val'.*test, train"):
        PairedFolder(tmp_path / "GoPro", split="val")
    with pytest.raises(RobustirError, match="GoPro layout"):
        PairedFolder(tmp_path / "GoPro")  # the root holds splits, not sequences


def test_paired_flat_layout_and_errors(tmp_path: Path) -> None:
    _write_images(tmp_path / "p" / "input", ["a.png", "b.png"], (9, 9))
    _write_images(tmp_path / "p" / "target", ["a.png", "b.png"], (9, 9), seed=1)
    ds = PairedFolder(tmp_path / "p", channels=3)
    assert ds.layout == "flat" and ds.names == ["a.png", "b.png"] and ds[1]["input"].shape == (3, 9, 9)

    _write_images(tmp_path / "u" / "input", ["a.png", "b.png"], (9, 9))
    _write_images(tmp_path / "u" / "target", ["a.png", "c.png"], (9, 9))
    with pytest.raises(RobustirError, match="unmatched pairs.*input\\(s\\) without a target \\(e.g. b\\).*c"):
        PairedFolder(tmp_path / "u")

    _write_images(tmp_path / "s" / "input", ["a.png"], (9, 9))
    _write_images(tmp_path / "s" / "target", ["a.png"], (9, 10))
    with pytest.raises(RobustirError, match="size mismatch.*input.*a.png.*9x9.*9x10"):
        PairedFolder(tmp_path / "s")

    (tmp_path / "e" / "input").mkdir(parents=True)
    (tmp_path / "e" / "target").mkdir()
    with pytest.raises(RobustirError, match="contains no images"):
        PairedFolder(tmp_path / "e")
    _write_images(tmp_path / "m" / "input", ["a.png"], (9, 9))
    with pytest.raises(RobustirError, match="'target' is missing"):
        PairedFolder(tmp_path / "m")
    with pytest.raises(RobustirError, match="does not exist"):
        PairedFolder(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------- RandomPatches

def test_dihedral_group_is_eight_distinct_transforms() -> None:
    x = torch.arange(9.0).reshape(1, 3, 3)
    outs = {tuple(dihedral(x, m).flatten().tolist()) for m in range(8)}
    assert len(outs) == 8
    np.testing.assert_array_equal(dihedral(x, 1)[0].numpy(), np.rot90(x[0].numpy(), 1))
    np.testing.assert_array_equal(dihedral(x, 4)[0].numpy(), np.fliplr(x[0].numpy()))


def test_random_patches_deterministic_and_are_crops(tmp_path: Path) -> None:
    _write_images(tmp_path / "c", ["0.png", "1.png"], (30, 25))
    base = ImageFolder(tmp_path / "c")
    ds = RandomPatches(base, patch_size=8, patches_per_image=5, seed=3)
    assert len(ds) == 10
    first = [ds[i]["target"] for i in range(10)]
    again = RandomPatches(base, patch_size=8, patches_per_image=5, seed=3, cache=True)
    for i in reversed(range(10)):
        assert torch.equal(again[i]["target"], first[i])
    modes = set()
    for i, patch in enumerate(first):
        assert patch.shape == (1, 8, 8)
        top, left, mode = map(int, ds[i]["name"].split("@")[1].split(","))
        modes.add(mode)
        src = base[i // 5]["target"]
        assert torch.equal(patch, dihedral(src[:, top:top + 8, left:left + 8], mode))
    assert len(modes) > 1
    ds.set_epoch(1)
    assert not all(torch.equal(ds[i]["target"], first[i]) for i in range(10))
    plain = RandomPatches(base, patch_size=8, seed=3, augment=False)
    assert all(plain[i]["name"].endswith(",0") for i in range(2))


def test_random_patches_paired_and_degraded(tmp_path: Path) -> None:
    _write_images(tmp_path / "p" / "input", ["a.png"], (16, 16, 3))
    _write_images(tmp_path / "p" / "target", ["a.png"], (16, 16, 3), seed=5)
    paired = PairedFolder(tmp_path / "p")
    ds = RandomPatches(paired, patch_size=6, patches_per_image=4, seed=0)
    for i in range(4):
        item = ds[i]
        top, left, mode = map(int, item["name"].split("@")[1].split(","))
        assert torch.equal(item["input"], dihedral(paired[0]["input"][:, top:top + 6, left:left + 6], mode))
        assert torch.equal(item["target"], dihedral(paired[0]["target"][:, top:top + 6, left:left + 6], mode))
    # training data: patches of clean images, then seeded noise per patch
    train = DegradedImages(RandomPatches(ImageFolder(tmp_path / "p" / "target"), patch_size=8, patches_per_image=3),
                           noise(15), seed=0)
    batch = next(iter(DataLoader(train, batch_size=3)))
    assert batch["input"].shape == (3, 3, 8, 8) and batch["target"].shape == (3, 3, 8, 8)


def test_random_patches_errors(tmp_path: Path) -> None:
    _write_images(tmp_path / "c", ["0.png"], (6, 6))
    base = ImageFolder(tmp_path / "c")
    with pytest.raises(RobustirError, match="smaller than the patch size 8"):
        RandomPatches(base, patch_size=8)[0]
    with pytest.raises(RobustirError, match="patch_size"):
        RandomPatches(base, patch_size=0)
    with pytest.raises(RobustirError, match="patches_per_image"):
        RandomPatches(base, patch_size=2, patches_per_image=0)


def test_saved_16bit_dataset_round_trip(tmp_path: Path) -> None:
    x = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(0))
    save_image(x, tmp_path / "d" / "x.png", bits=16)
    assert float((ImageFolder(tmp_path / "d")[0]["target"] - x).abs().max()) <= 0.5 / 65535 + 1e-7
