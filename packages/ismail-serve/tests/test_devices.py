"""--dtype auto follows ismail_core's precision policy; --device and --quantize are checked first.

CUDA and Apple's MPS are simulated by patching torch's availability checks and ismail_core's
bf16/fp8 probes; no tensor goes to a GPU, and MPS itself is not exercised (this CI has no Mac).
"""

from __future__ import annotations

import pytest
import torch
from ismail_core import runtime
from ismail_core.runtime import DeviceError, PrecisionError
from ismail_serve.cli import main
from ismail_serve.server import ServeConfig, resolve_dtype, resolve_placement

CUDA = torch.device("cuda", 0)
MPS = torch.device("mps")
CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend which device types run bf16 natively: native_bf16("cuda", "mps", ...)."""

    def pretend(*types: str) -> None:
        def is_bf16_supported(including_emulation: bool = True) -> bool:
            return including_emulation or "cuda" in types  # emulation must not count

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
        monkeypatch.setattr(runtime, "mps_has_bf16", lambda: "mps" in types)
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: "cpu" in types)

    return pretend


@pytest.mark.parametrize(
    ("device", "native", "expected"),
    [
        (CUDA, ("cuda",), torch.bfloat16),
        (CUDA, (), torch.float16),  # before Ampere: was bfloat16, emulated
        (MPS, ("mps",), torch.bfloat16),
        (MPS, (), torch.float16),
        (CPU, ("cpu",), torch.bfloat16),  # AVX512-BF16 / AMX
        (CPU, ("cuda", "mps"), torch.float32),
    ],
)
@pytest.mark.parametrize("name", [None, "auto"])
def test_auto_dtype_per_device(
    native_bf16, name, device: torch.device, native: tuple, expected: torch.dtype
) -> None:
    native_bf16(*native)
    assert resolve_dtype(name, device) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)],
)
def test_explicit_dtypes_that_the_device_runs(native_bf16, name: str, expected) -> None:
    native_bf16("mps")
    assert resolve_dtype(name, MPS) == expected


def test_bfloat16_on_a_gpu_without_it_suggests_float16(native_bf16) -> None:
    native_bf16("cpu")
    with pytest.raises(PrecisionError) as caught:
        resolve_dtype("bfloat16", CUDA)
    assert str(caught.value) == (
        "--dtype bfloat16: cuda:0 does not run bf16 (it needs a GPU of compute capability 8.0 "
        "(Ampere) or newer); use --dtype float16 or float32"
    )


def test_unknown_dtype_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="--dtype must be one of float32, bfloat16, float16"):
        resolve_dtype("fp16", CPU)


def test_fp8_quantization_on_mps_without_float8_is_refused(monkeypatch, native_bf16) -> None:
    native_bf16("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "probe_device", lambda device: None)
    monkeypatch.setattr(runtime, "mps_has_fp8", lambda: False)
    config = ServeConfig(checkpoint="unused", device="mps")
    assert resolve_placement(config) == (MPS, torch.bfloat16)
    config.quantize = "fp8"
    with pytest.raises(PrecisionError, match=r"^--quantize fp8: FP8 does not run on mps"):
        resolve_placement(config)


def test_missing_mps_is_refused_before_loading(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^device mps \(--device\) is not available"):
        resolve_placement(ServeConfig(checkpoint="unused", device="mps"))


def test_cli_reports_a_missing_mps_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr("ismail_core.checkpoint.resolve_checkpoint", lambda path: path)
    assert main([str(tmp_path), "--device", "mps"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ismail-serve: error: device mps (--device) is not available")
    assert "use --device auto or cpu" in err and err.count("\n") == 1
