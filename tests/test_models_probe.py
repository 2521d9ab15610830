"""robustir.models.probe: the one-forward checks `attack`, `run` and `train` make before writing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from robustir.errors import RobustirError
from robustir.experiments.runner import run_experiment
from robustir.experiments.spec import load_experiment
from robustir.models import build, restorer
from robustir.models.probe import channel_errors, channel_keys, channel_mismatch, probe_condition, run_once

GRAY = {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 3, "act_mode": "BR"}


def test_channel_errors_and_mismatch_on_a_gray_and_an_rgb_model() -> None:
    torch.manual_seed(0)
    gray = restorer(build(GRAY))
    errors = channel_errors(gray, size=16)
    assert errors[1] is None and isinstance(errors[3], RobustirError) and "(N, 1, H, W)" in str(errors[3])
    assert channel_mismatch(gray, 3, size=16) == 1 and channel_mismatch(gray, 1, size=16) is None
    rgb = restorer(build({**GRAY, "in_nc": 3, "out_nc": 3}))
    assert channel_mismatch(rgb, 1, size=16) == 3 and channel_mismatch(rgb, 3, size=16) is None
    # a count outside 1/3 is tried as well and reported against the one that runs
    assert channel_mismatch(rgb, 4, size=16) == 3


def test_a_model_failing_on_every_count_is_not_called_a_channel_mismatch() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("needs 128x128 at least\nsecond line")

    model = restorer(Broken())
    errors = channel_errors(model, size=8)
    assert set(errors) == {1, 3} and all(isinstance(e, RobustirError) for e in errors.values())
    assert channel_mismatch(model, 3, size=8) is None
    with pytest.raises(RobustirError, match="needs 128x128 at least"):
        run_once(Broken(), torch.zeros(1, 1, 8, 8))  # a bare module: torch's first line, as a RobustirError
    with pytest.raises(RobustirError) as info:
        run_once(Broken(), torch.zeros(1, 1, 8, 8))
    assert "second line" not in str(info.value)


def test_out_of_memory_is_not_disguised_as_an_input_error() -> None:
    class Oom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    for model in (Oom(), restorer(Oom())):
        with pytest.raises(torch.cuda.OutOfMemoryError):
            run_once(model, torch.zeros(1, 1, 8, 8))
        with pytest.raises(torch.cuda.OutOfMemoryError):
            channel_errors(model, size=8)


def test_run_once_leaves_mode_rng_and_batchnorm_statistics_as_they_were() -> None:
    torch.manual_seed(1)
    net = build(GRAY).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 1, 12, 12)
    state = torch.get_rng_state()
    out = run_once(net, x)
    assert out.shape == (2, 1, 12, 12) and not out.requires_grad
    assert net.training  # put back in training mode
    assert torch.equal(torch.get_rng_state(), state)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running mean/var and num_batches_tracked unmoved
    net.eval()
    run_once(net, torch.rand(1, 1, 12, 12))
    assert not net.training

    class Draws(nn.Module):  # a model that samples in its forward (noise injection, stochastic depth)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0 * torch.rand_like(x)

    state = torch.get_rng_state()
    run_once(Draws(), x)
    assert torch.equal(torch.get_rng_state(), state)
    Draws()(x)
    assert not torch.equal(torch.get_rng_state(), state)  # the check above can fail


def test_probe_condition_gives_what_a_non_blind_model_needs() -> None:
    denoiser = restorer("ffdnet-gray")
    deblurrer = restorer({"type": "RGDN"})
    assert probe_condition(denoiser) == {"sigma": 25 / 255}
    cond = probe_condition(deblurrer)
    assert set(cond) == {"kernel"} and cond["kernel"].shape == (5, 5) and float(cond["kernel"].sum()) == pytest.approx(1)
    assert probe_condition(restorer(build(GRAY))) == {}
    assert channel_errors(denoiser, size=16)[1] is None
    assert channel_errors(deblurrer, size=16, channels=(3,))[3] is None


def test_channel_keys_finds_every_spelling_and_nothing_else() -> None:
    spec = {"type": "X", "in_nc": 1, "inp_channels": 3, "in_chans": 3, "n_colors": 3, "img_channel": 3,
            "out_nc": 1, "nc": 64, "width": 32, "channels_last": True}
    assert channel_keys(spec) == ["in_nc", "inp_channels", "in_chans", "n_colors", "img_channel"]


def test_run_names_the_spec_key_of_a_channel_mismatch(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "rgb").mkdir()
    Image.new("RGB", (24, 24), (10, 200, 30)).save(tmp_path / "rgb" / "a.png")
    spec = {"name": "probe", "seed": 0, "save_artifacts": 0, "models": {"g": {"spec": GRAY}},
            "data": {"d": {"source": str(tmp_path / "rgb"), "degradation": {"noise_sigma": 25}}},
            "attacks": {"none": {"preset": "fgsm", "params": {"eps": "1/255"}}}, "metrics": ["psnr"]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(RobustirError) as info:
        run_experiment(load_experiment(tmp_path / "e.yaml", output=str(tmp_path / "out")), progress=False)
    msg = str(info.value)
    assert msg.startswith("models.g cannot restore data.d (images with 3 channel(s): ")
    assert "DnCNN takes 1-channel images (in_nc: 1); set data.d.channels: 1 to convert" in msg
    assert not (tmp_path / "out").exists()
