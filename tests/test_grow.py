"""Growing a trained NAFNet-family or Restormer network deeper: the shallow checkpoint fills the blocks it has, the
added blocks start as identities (their output scales zeroed), so the grown network computes exactly the shallow one's
function; every other mismatch is an error that leaves the model unchanged; `train.grow` does it at the start of a run
and records the added blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from random_weights import trained_like
from safetensors.torch import save_file

from robustir.errors import CheckpointMismatchError, RobustirError
from robustir.models import build
from robustir.models.grow import identity_blocks, load_grown
from robustir.train import config_from_dict
from robustir.train.loop import TrainingData, train

SHALLOW = {"type": "NAFNet", "img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1],
           "dec_blk_nums": [1, 1]}


def _save(net: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("kind", ["NAFNet", "Baseline"])
def test_grown_network_computes_the_shallow_one_exactly(tmp_path: Path, kind: str) -> None:
    spec = {**SHALLOW, "type": kind}
    shallow = trained_like(spec)
    path = _save(shallow, tmp_path / "shallow.safetensors")
    deep = build({**spec, "middle_blk_num": 3, "enc_blk_nums": [1, 2], "dec_blk_nums": [2, 1]})
    added = load_grown(deep, path)
    assert added == ["decoders.0.1", "encoders.1.1", "middle_blks.1", "middle_blks.2"]
    x = torch.rand(2, 3, 37, 29, generator=torch.Generator().manual_seed(1))  # odd: pad-and-crop on the way
    with torch.no_grad():
        ref, out = shallow(x), deep(x)
    assert float((ref - x).abs().mean()) > 0.05  # the shallow network is far from the identity: a real test
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # the added blocks still learn: their scales get gradients at once
    F.mse_loss(deep(x), x).backward()
    assert all(float(deep.get_submodule(b).beta.grad.abs().sum()) > 0 for b in added)


def test_grow_errors_name_the_problem_and_leave_the_model_unchanged(tmp_path: Path) -> None:
    shallow_path = _save(trained_like(SHALLOW), tmp_path / "shallow.safetensors")
    deep_spec = {**SHALLOW, "middle_blk_num": 2}
    deep_path = _save(trained_like(deep_spec, seed=1), tmp_path / "deep.safetensors")

    def unchanged(model: torch.nn.Module, load: object, match: str) -> None:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointMismatchError, match=match):
            load_grown(model, load)  # type: ignore[arg-type]
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    unchanged(build(SHALLOW), deep_path, r"keys the model lacks \(middle_blks\.1\.")  # shrinking is not growing
    unchanged(build({**SHALLOW, "width": 16, "middle_blk_num": 2}), shallow_path, "wrongly shaped")
    unchanged(build(SHALLOW), shallow_path, "nothing to grow")
    partial = {k: v for k, v in build(deep_spec).state_dict().items() if not k.startswith("middle_blks.1.conv4")}
    unchanged(build(deep_spec), partial, r"partly in the checkpoint: middle_blks\.1")
    # a tensor missing outside any residual block cannot start as an identity
    no_intro = {k: v for k, v in build(deep_spec).state_dict().items() if not k.startswith("intro.")}
    unchanged(build(deep_spec), no_intro, r"outside an added residual block.*intro\.")


@pytest.mark.parametrize("kind", ["nafnet_scales_set", "restormer"])
def test_added_blocks_are_zeroed_into_identities(tmp_path: Path, kind: str) -> None:
    if kind == "restormer":  # Restormer blocks have no zero-initialised scales: growing zeroes their project_out
        shallow = {"type": "Restormer", "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
                   "heads": [1, 2, 4, 8]}
        deep_spec = {**shallow, "num_blocks": [1, 2, 1, 3], "num_refinement_blocks": 2}
        expect = ["decoder_level2.1", "encoder_level2.1", "latent.1", "latent.2", "refinement.1"]
    else:  # a NAFNet block whose beta/gamma are not zero (say, copied from elsewhere) is reset to the identity
        shallow, deep_spec, expect = SHALLOW, {**SHALLOW, "middle_blk_num": 3}, ["middle_blks.1", "middle_blks.2"]
    start = trained_like(shallow)
    path = _save(start, tmp_path / "shallow.safetensors")
    deep = trained_like(deep_spec, seed=5)
    kept = {k: v.clone() for k, v in deep.state_dict().items() if ".project_out." not in k and "beta" not in k
            and "gamma" not in k}
    assert not identity_blocks(deep)
    assert load_grown(deep, path) == expect
    assert sorted(identity_blocks(deep)) == expect  # only the added blocks are identities
    for k, v in kept.items():  # the added blocks keep their own weights except the zeroed output scales
        if any(k.startswith(b + ".") for b in expect):
            torch.testing.assert_close(deep.state_dict()[k], v, rtol=0, atol=0)
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(deep(x), start(x), rtol=0, atol=0)
    deep(x).square().mean().backward()  # the zeroed scales get gradients: the added blocks open up at once
    for b in expect:
        scales = [p for n, p in deep.named_parameters() if n.startswith(b + ".") and
                  (".project_out." in n or n.endswith(("beta", "gamma")))]
        assert scales and all(p.grad is not None and p.grad.abs().sum() > 0 for p in scales)


def test_identity_blocks_are_the_fresh_ones() -> None:
    net = build(SHALLOW)
    assert set(identity_blocks(net)) == {"encoders.0.0", "encoders.1.0", "middle_blks.0", "decoders.0.0",
                                         "decoders.1.0"}
    assert identity_blocks(trained_like(SHALLOW)) == []


def _cfg(out: Path, model: dict, *, init: str | None = None, grow: bool = False, lr: float = 1e-3) -> dict:
    run = {"steps": 2, "out": str(out), "ckpt_every": 1, "log_every": 1, "device": "cpu", "seed": 3, "grow": grow}
    if init is not None:
        run["init"] = init
    return {"model": dict(model), "data": {"train": "unused", "channels": 3, "patch_size": 16, "batch_size": 2},
            "batch": [{"type": "noise", "sigma": 10}], "loss": {"type": "L1"}, "optim": {"type": "AdamW", "lr": lr},
            "train": run}


def test_train_grow_starts_from_the_shallow_function_and_records_the_added_blocks(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    data = TrainingData(targets=[torch.rand(3, 24, 24, generator=g) for _ in range(3)])
    start = _save(trained_like(SHALLOW), tmp_path / "start.safetensors")
    deep = {**SHALLOW, "middle_blk_num": 2}
    with pytest.raises(CheckpointMismatchError, match="missing keys: middle_blks.1"):  # strict without grow
        train(config_from_dict(_cfg(tmp_path / "strict", deep, init=str(start))), data=data, progress=False)
    with pytest.raises(RobustirError, match="train.grow: .* give train.init"):
        config_from_dict(_cfg(tmp_path / "x", deep, grow=True))
    grown = train(config_from_dict(_cfg(tmp_path / "g", deep, init=str(start), grow=True)), data=data,
                  progress=False)
    shallow = train(config_from_dict(_cfg(tmp_path / "s", SHALLOW, init=str(start))), data=data, progress=False)
    info = json.loads((tmp_path / "g" / "model.json").read_text())["init"]
    assert info["grown"] == ["middle_blks.1"] and info["ref"] == str(start)
    # same seed, same batches, same function at step 0: the first logged loss (before any update) is the same
    first = [json.loads((tmp_path / r / "log.jsonl").read_text().splitlines()[0])["loss"] for r in "gs"]
    assert first[0] == pytest.approx(first[1], rel=1e-6)
    assert set(grown.weights) - set(shallow.weights) and set(shallow.weights) < set(grown.weights)
    from robustir.train.shipped import training_stages

    stages = training_stages(tmp_path / "g", json.loads((tmp_path / "g" / "model.json").read_text()))
    assert stages[-1]["init"]["grown"] == ["middle_blks.1"]  # the card says which blocks were added


def test_growing_the_shipped_nafnet_keeps_its_restorations() -> None:
    from robustir.models import load_weights
    from robustir.train.shipped import shipped_card, shipped_path

    spec = shipped_card("nafnet_deblur_small_70k")["spec"]
    shipped = load_weights(build(spec), shipped_path("nafnet_deblur_small_70k"))
    deeper = build({**spec, "middle_blk_num": spec["middle_blk_num"] + 2})
    assert load_grown(deeper, shipped_path("nafnet_deblur_small_70k")) == ["middle_blks.1", "middle_blks.2"]
    x = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(deeper(x), shipped(x), rtol=0, atol=0)
