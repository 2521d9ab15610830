"""Checkpoint loading: containers, prefixes, formats, foreign key maps, unsafe/truncated files, atomic failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robustir.errors import CheckpointMismatchError, RobustirError, UnsafeCheckpointError
from robustir.models import build, load_weights

TINY = {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 5, "act_mode": "BR"}


def _randomised(spec: dict) -> nn.Module:
    net = build(spec)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    return net.eval()


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


_WRAPS = ["plain", "params", "params_ema", "state_dict", "module", "module_params"]
_CASES = [(w, f) for f in (".pth", ".pt") for w in _WRAPS] + [("plain", ".safetensors"), ("module", ".safetensors")]


@pytest.mark.parametrize("wrap,fmt", _CASES)
def test_containers_and_formats(tmp_path: Path, wrap: str, fmt: str) -> None:
    src = _randomised(TINY)
    state = src.state_dict()
    if wrap.startswith("module"):
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / f"ckpt{fmt}"
    if fmt == ".safetensors":  # a flat tensor dict only
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        obj = {"plain": state, "module": state, "params": {"params": state, "iter": torch.tensor(3)},
               "params_ema": {"params_ema": state, "params": {}}, "state_dict": {"state_dict": state, "epoch": 4},
               "module_params": {"params": state}}[wrap]
        torch.save(obj, path)
    dst = build(TINY)
    assert not _same(src, dst)
    out = load_weights(dst, path)
    assert out is dst and _same(src, dst)


def test_params_ema_preferred_and_explicit_key(tmp_path: Path) -> None:
    a, b = _randomised(TINY), _randomised(TINY)
    path = tmp_path / "two.pth"
    torch.save({"params": a.state_dict(), "params_ema": b.state_dict()}, path)
    assert _same(load_weights(build(TINY), path), b)
    assert _same(load_weights(build(TINY), path, key="params"), a)
    with pytest.raises(RobustirError, match="no key 'nope'.*params"):
        load_weights(build(TINY), path, key="nope")


def test_in_memory_state_dict_and_dtype_cast() -> None:
    src = _randomised(TINY)
    state = {k: (v.double() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    dst = load_weights(build(TINY), state)
    assert all(t.dtype in (torch.float32, torch.int64) for t in dst.state_dict().values())
    assert _same(src, dst)


def test_mismatch_names_missing_unexpected_and_shapes_and_leaves_model_unchanged() -> None:
    src = _randomised(TINY).state_dict()
    dst = _randomised(TINY)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    bad = dict(src)
    bad.pop("model.0.bias")
    bad["model.99.weight"] = torch.zeros(3)
    bad["model.2.weight"] = torch.zeros(8, 8, 5, 5)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(dst, bad)
    msg = str(info.value)
    assert "model.0.bias" in msg and "model.99.weight" in msg and "model.2.weight" in msg
    assert "missing" in msg and "unexpected" in msg and "wrongly shaped" in msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


@pytest.mark.parametrize("bad", ["int32", "bool", "nan_weight", "inf_weight", "nan_buffer"])
def test_integer_and_non_finite_weights_are_refused(tmp_path: Path, bad: str) -> None:
    src = _randomised(TINY).state_dict()
    key = "model.3.running_mean" if bad == "nan_buffer" else "model.0.weight"
    state = dict(src)
    if bad == "int32":
        state[key] = (src[key] * 1000).int()  # a cast would give a network scoring ~3 dB, not an error
    elif bad == "bool":
        state[key] = src[key] > 1.0
    else:
        state[key] = src[key].clone()
        state[key].view(-1)[3] = float("inf") if bad == "inf_weight" else float("nan")
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    dst = _randomised(TINY)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    what = "non-floating-point" if bad in ("int32", "bool") else "non-finite"
    with pytest.raises(CheckpointMismatchError, match=f"{what}.*{key}.*damaged or not a weight file"):
        load_weights(dst, path)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_integer_buffers_accept_other_integer_dtypes() -> None:
    src = _randomised(TINY).state_dict()
    state = dict(src)
    state["model.3.num_batches_tracked"] = torch.tensor(7, dtype=torch.int32)
    dst = load_weights(build(TINY), state)
    assert int(dst.state_dict()["model.3.num_batches_tracked"]) == 7


def test_non_strict_allows_missing_but_not_wrong_shapes() -> None:
    src = _randomised(TINY)
    partial = {k: v for k, v in src.state_dict().items() if k.startswith("model.0.")}
    dst = build(TINY)
    load_weights(dst, partial, strict=False)
    assert torch.equal(dst.model[0].weight, src.model[0].weight)
    with pytest.raises(CheckpointMismatchError, match="wrongly shaped"):
        load_weights(build(TINY), {"model.0.weight": torch.zeros(8, 1, 5, 5)}, strict=False)


def test_checkpoint_for_another_architecture(tmp_path: Path) -> None:
    other = build({"type": "FDnCNN", "in_nc": 2, "out_nc": 1, "nc": 8, "nb": 5, "act_mode": "R"})
    path = tmp_path / "fdncnn.pth"
    torch.save(other.state_dict(), path)
    dst = _randomised(TINY)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="another architecture"):
        load_weights(dst, path)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


@pytest.mark.parametrize("fmt", [".pth", ".safetensors"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    src = _randomised(TINY)
    full = tmp_path / f"full{fmt}"
    if fmt == ".safetensors":
        save_file(src.state_dict(), str(full))
    else:
        torch.save(src.state_dict(), full)
    cut = tmp_path / f"cut{fmt}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    dst = _randomised(TINY)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(RobustirError, match="truncated or corrupt"):
        load_weights(dst, cut)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_missing_file_and_bad_objects(tmp_path: Path) -> None:
    with pytest.raises(RobustirError, match="does not exist"):
        load_weights(build(TINY), tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(RobustirError, match="expected a state dict"):
        load_weights(build(TINY), path)
    with pytest.raises(RobustirError, match="non-tensor entries"):
        load_weights(build(TINY), {"model.0.weight": 3})
    with pytest.raises(RobustirError, match="file path or a state dict"):
        load_weights(build(TINY), 42)  # type: ignore[arg-type]


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("this must never run",))


def test_pickled_object_is_refused_without_unpickling(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model.0.weight": _Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="unsafe"):
        load_weights(build(TINY), path)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.data
def test_shared_pickled_whole_model_is_unsafe(data_root: Path) -> None:
    path = data_root / "weights" / "untrusted" / "pickled_full_model_dncnn_sigma25.pth"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    net = build("dncnn-s25")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UnsafeCheckpointError, match="never unpickles"):
        load_weights(net, path)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _saoyan_reference(num_layers: int) -> nn.Sequential:
    """The SaoYan/DnCNN-PyTorch network written out independently: bias-free convs, default-eps BN, noise output."""
    layers: list[nn.Module] = [nn.Conv2d(1, 64, 3, padding=1, bias=False), nn.ReLU()]
    for _ in range(num_layers - 2):
        layers += [nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    layers.append(nn.Conv2d(64, 1, 3, padding=1, bias=False))
    return nn.Sequential(*layers)


@pytest.mark.data
@pytest.mark.parametrize("name,nb", [("S-25", 17), ("B", 20)])
def test_saoyan_key_map_matches_reference(data_root: Path, name: str, nb: int) -> None:
    path = data_root / "weights" / "dncnn" / f"saoyan_dncnn_{name}.pth"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    ref = _saoyan_reference(nb)
    ref.load_state_dict({k.removeprefix("module.dncnn."): v for k, v in raw.items()})
    ref.eval()
    x = torch.rand(2, 1, 23, 31)
    y = x + 25 / 255 * torch.randn(x.shape)
    with torch.no_grad():
        expected = y - ref(y)
        for act in ("BR", "R"):
            net = build({"type": "DnCNN", "nb": nb, "act_mode": act})
            load_weights(net, path)
            got = net.eval()(y)
            assert (got - expected).abs().max().item() < 1e-5, act


@pytest.mark.data
def test_matconvnet_weights_equal_kair_release(data_root: Path) -> None:
    folder = data_root / "weights" / "dncnn"
    if not (folder / "matconvnet_dncnn_sigma25.mat").is_file() or not (folder / "kair_dncnn_25.pth").is_file():
        pytest.skip("DnCNN weights not present")
    a = load_weights(build("dncnn-s25"), folder / "kair_dncnn_25.pth").state_dict()
    b = load_weights(build("dncnn-s25"), folder / "matconvnet_dncnn_sigma25.mat").state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    blind = load_weights(build("dncnn-b"), folder / "matconvnet_dncnn_gray_blind.mat")
    assert len(blind.state_dict()) == 40
    with pytest.raises(RobustirError, match="conv layers"):
        load_weights(build("dncnn-s25"), folder / "matconvnet_dncnn_gray_blind.mat")


def test_files_that_are_not_checkpoints(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    import pickle

    import numpy as np
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    text = tmp_path / "notes.pth"
    text.write_text("hello world")
    foreign = tmp_path / "foreign.pkl"  # a protocol-4 pickle that is not torch.save's format
    foreign.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases = [(image, r"not a PyTorch checkpoint of tensors .*'Unsupported operand 80'"),
             (foreign, "not a PyTorch checkpoint of tensors"),
             # which of the two messages depends on how far torch's reader gets (torch-version specific)
             (text, r"cannot be read \(truncated or corrupt file\?\)|not a PyTorch checkpoint"),
             (empty, r"cannot be read \(truncated or corrupt file\?\)|not a PyTorch checkpoint")]
    for path, message in cases:
        net = _randomised(TINY)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        with pytest.raises(RobustirError, match=message) as info:
            load_weights(net, path)
        assert not isinstance(info.value, UnsafeCheckpointError)  # garbage is not reported as a pickled object
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
