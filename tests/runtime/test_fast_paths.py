"""Fast paths: per-device defaults, channels-last layout and in-place compilation leave values and
checkpoint names unchanged."""

from __future__ import annotations

import torch

from medssl.config import RuntimeConfig
from medssl.methods import create_method
from medssl.runtime.fast_paths import apply_fast_paths, compile_networks, resolve_fast_paths, to_channels_last


def test_defaults_per_device_and_explicit_switches() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_fast_paths(cpu, deterministic=False) == resolve_fast_paths(cpu, deterministic=True)
    assert not resolve_fast_paths(cpu, False).channels_last and not resolve_fast_paths(cpu, False).compile
    assert resolve_fast_paths(cuda, deterministic=False).cudnn_benchmark
    assert not resolve_fast_paths(cuda, deterministic=True).cudnn_benchmark  # autotuning is not deterministic
    on = resolve_fast_paths(cpu, True, channels_last="on", compile="on")
    assert on.channels_last and on.compile and not on.cudnn_benchmark


def test_channels_last_and_compile_keep_values_and_names() -> None:
    torch.manual_seed(0)
    method = create_method("dual_branch", {"network": {"base_width": 4, "has_dropout": False}}).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    before = method.net(x)[0]
    names = list(method.state_dict())
    to_channels_last(method)
    assert [n for n, p in method.named_parameters() if p.ndim == 5]  # 3D convolutions were converted
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in method.parameters() if p.ndim == 5)
    assert compile_networks(method, backend="eager") == ["net"]  # the dual V-Net, not its branches again
    torch.testing.assert_close(method.net(x)[0], before, rtol=1e-4, atol=1e-5)
    assert list(method.state_dict()) == names  # in-place compilation: checkpoints keep their names


def test_apply_reads_the_runtime_settings() -> None:
    method = create_method("supervised", {"network": {"base_width": 4}})
    rt = RuntimeConfig(name="x", channels_last="on")
    paths = apply_fast_paths(method, rt, torch.device("cpu"))
    assert paths.channels_last and not paths.compile
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in method.parameters() if p.ndim == 5)
