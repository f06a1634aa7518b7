"""Device selection (cuda > mps > cpu) and the precision policy per device.

No test moves a tensor to a GPU: CUDA and Apple's MPS are simulated by patching torch's
availability checks and the bf16/fp8 probes, so the decisions are tested on any machine. MPS
itself is not exercised here (this CI has no Mac).
"""

from __future__ import annotations

import pytest
import torch
from ismail_core import runtime
from ismail_core.runtime import (
    DeviceError,
    PrecisionError,
    auto_precision,
    resolve_device,
    resolve_precision,
)
from ismail_core.train import metrics, resume
from ismail_core.train.config import ConfigError, DistSection
from ismail_core.train.distributed import init_distributed
from ismail_core.train.precision import build_precision

CUDA = torch.device("cuda", 0)
MPS = torch.device("mps")
CPU = torch.device("cpu")


@pytest.fixture
def machine(monkeypatch):
    """Pretend which backends this machine has: machine(cuda=..., mps=..., mps_built=...)."""

    def pretend(cuda: bool = False, mps: bool = False, mps_built: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.backends.mps, "is_built", lambda: mps_built)

    return pretend


@pytest.fixture
def probed(monkeypatch) -> list:
    """Devices handed to runtime.probe_device, which then succeeds without touching them."""
    seen: list = []
    monkeypatch.setattr(runtime, "probe_device", seen.append)
    return seen


@pytest.fixture
def bf16(monkeypatch):
    """Pretend which devices run bf16 natively: bf16(cuda=..., mps=..., cpu=...)."""

    def pretend(cuda: bool = False, mps: bool = False, cpu: bool = False) -> None:
        # torch's default (including_emulation=True) says yes on every CUDA GPU; only the
        # native answer may count, so the emulated one is True here whatever `cuda` is.
        def is_bf16_supported(including_emulation: bool = True) -> bool:
            return including_emulation or cuda

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
        monkeypatch.setattr(runtime, "mps_has_bf16", lambda: mps)
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: cpu)

    return pretend


# ------------------------------------------------------------------------- device selection
@pytest.mark.parametrize(
    ("cuda", "mps", "local_rank", "expected"),
    [
        (True, True, 0, "cuda:0"),
        (True, False, 1, "cuda:1"),
        (False, True, 0, "mps"),
        (False, True, 3, "mps"),  # one Apple GPU: the rank does not pick among several
        (False, False, 2, "cpu"),
    ],
)
def test_auto_picks_cuda_then_mps_then_cpu(
    machine, cuda: bool, mps: bool, local_rank: int, expected: str
) -> None:
    machine(cuda=cuda, mps=mps)
    assert str(resolve_device("auto", local_rank=local_rank)) == expected


def test_no_device_is_the_cpu_even_with_a_gpu(machine) -> None:
    machine(cuda=True, mps=True)
    assert resolve_device(None) == CPU


def test_plain_cuda_is_this_process_gpu(machine, probed: list) -> None:
    machine(cuda=True)
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 2)
    assert resolve_device("cuda:1", local_rank=2) == torch.device("cuda", 1)
    assert probed == [torch.device("cuda", 2), torch.device("cuda", 1)]


def test_explicit_mps_when_available(machine, probed: list) -> None:
    machine(mps=True)
    assert resolve_device("mps") == MPS
    assert probed == [MPS]


@pytest.mark.parametrize(
    ("built", "reason"),
    [(False, "this torch build has no MPS"), (True, "this machine cannot run it")],
)
def test_missing_mps_names_device_flag_and_fix(
    machine, probed: list, built: bool, reason: str
) -> None:
    machine(cuda=True, mps=False, mps_built=built)
    with pytest.raises(DeviceError) as caught:
        resolve_device("mps", flag="--train.device")
    message = str(caught.value)
    assert message.startswith("device mps (--train.device) is not available on this machine")
    assert reason in message
    assert "Apple silicon, macOS 12.3 or newer and a torch build with MPS" in message
    assert message.endswith("use --train.device auto or cpu")
    assert probed == []  # refused before asking the backend


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_missing_cuda_names_device_flag_and_fix(machine, probed: list, name: str) -> None:
    machine(cuda=False, mps=True)
    with pytest.raises(DeviceError) as caught:
        resolve_device(name, flag="--device")
    message = str(caught.value)
    assert message.startswith(f"device {name} (--device) is not available on this machine")
    assert "torch finds no CUDA GPU" in message
    assert message.endswith("use --device auto, cpu, cuda, cuda:N or mps")
    assert probed == []


def test_a_backend_that_fails_its_probe_is_a_device_error(machine, monkeypatch) -> None:
    machine(cuda=True)

    def invalid_ordinal(device) -> None:
        raise RuntimeError("CUDA error: invalid device ordinal\nmore detail")

    monkeypatch.setattr(runtime, "probe_device", invalid_ordinal)
    reason = r"\(CUDA error: invalid device ordinal\); use --device auto"  # its first line
    with pytest.raises(DeviceError, match=rf"^device cuda:7 \(--device\) .*{reason}"):
        resolve_device("cuda:7")


def test_unknown_device_hint_lists_mps() -> None:
    with pytest.raises(
        DeviceError, match=r"unknown device 'tpu' \(--x\); use --x auto, .* or mps$"
    ):
        resolve_device("tpu", flag="--x")


def test_training_picks_mps_and_refuses_it_distributed(machine, monkeypatch) -> None:
    machine(mps=True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(DistSection(), "auto").device == MPS
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=r"does not run on mps: run one process"):
        init_distributed(DistSection(), "auto")


def test_missing_mps_for_training_is_a_config_error(machine) -> None:
    machine(mps=False, mps_built=False)
    with pytest.raises(ConfigError, match=r"train.device='mps': device mps \(--train.device\)"):
        init_distributed(DistSection(), "mps")


# ------------------------------------------------------------------------- precision policy
@pytest.mark.parametrize(
    ("device_type", "native_bf16", "expected"),
    [
        ("cuda", True, "bf16"),
        ("cuda", False, "fp16"),  # before Ampere
        ("mps", True, "bf16"),
        ("mps", False, "fp16"),  # before macOS 14
        ("cpu", True, "bf16"),  # AVX512-BF16 / AMX
        ("cpu", False, "fp32"),  # 16-bit formats are emulated, slower than fp32
    ],
)
def test_auto_precision_per_device(device_type: str, native_bf16: bool, expected: str) -> None:
    assert auto_precision(device_type, native_bf16) == expected


@pytest.mark.parametrize(
    ("device", "native", "expected"),
    [
        (CUDA, {"cuda": True}, "bf16"),
        (CUDA, {"mps": True, "cpu": True}, "fp16"),  # emulated bf16 does not count
        (MPS, {"mps": True}, "bf16"),
        (MPS, {"cuda": True, "cpu": True}, "fp16"),
        (CPU, {"cpu": True}, "bf16"),
        (CPU, {"cuda": True, "mps": True}, "fp32"),
    ],
)
def test_auto_asks_the_device_it_runs_on(
    bf16, device: torch.device, native: dict, expected: str
) -> None:
    bf16(**native)
    assert resolve_precision("auto", device) == expected


@pytest.mark.parametrize("device", [CUDA, MPS])
def test_fp16_on_a_gpu_without_bf16_gets_a_grad_scaler(machine, bf16, device: torch.device) -> None:
    machine(cuda=True, mps=True)  # GradScaler disables itself without its backend
    bf16()
    precision = build_precision("auto", device)
    assert precision.name == "fp16" and precision.compute_dtype == torch.float16
    assert isinstance(precision.scaler, torch.amp.GradScaler)


@pytest.mark.parametrize(("device", "native"), [(MPS, {"mps": True}), (CPU, {"cpu": True})])
def test_bf16_and_fp32_need_no_scaler(bf16, device: torch.device, native: dict) -> None:
    bf16(**native)
    assert build_precision("auto", device).scaler is None
    assert build_precision("fp32", device).scaler is None


@pytest.mark.parametrize(
    ("device", "needs"),
    [
        (CUDA, "it needs a GPU of compute capability 8.0 (Ampere) or newer"),
        (MPS, "it needs macOS 14 or newer"),
    ],
)
def test_bf16_on_a_gpu_without_it_suggests_fp16(bf16, device: torch.device, needs: str) -> None:
    bf16(cpu=True)
    with pytest.raises(PrecisionError) as caught:
        build_precision("bf16", device)
    assert str(caught.value) == (
        f"--train.precision bf16: {device} does not run bf16 ({needs}); "
        "use --train.precision fp16 or fp32"
    )


def test_the_error_spells_precisions_as_the_flag_does(bf16) -> None:
    bf16()
    names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    with pytest.raises(
        PrecisionError, match=r"^--dtype bfloat16: .* use --dtype float16 or float32$"
    ):
        resolve_precision("bf16", MPS, flag="--dtype", names=names)


def test_explicit_bf16_on_a_cpu_without_it_runs_emulated(bf16) -> None:
    bf16(cuda=True, mps=True)
    assert resolve_precision("bf16", CPU) == "bf16"


def test_fp8_runs_on_cuda_and_the_cpu_reference_path(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "mps_has_fp8", lambda: False)
    assert resolve_precision("fp8", CUDA) == "fp8"
    assert resolve_precision("fp8", CPU) == "fp8"


def test_fp8_on_mps_without_float8_dtypes_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "mps_has_fp8", lambda: False)
    with pytest.raises(PrecisionError, match=r"^--train.precision fp8: .*no float8.*CUDA GPU"):
        resolve_precision("fp8", MPS)


def test_fp8_on_mps_with_float8_dtypes_is_allowed(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "mps_has_fp8", lambda: True)  # newer torch releases
    assert resolve_precision("fp8", MPS) == "fp8"


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_the_mps_probes_say_no_without_mps() -> None:
    # The real probes, not patched: torch raises on this machine and the probe answers False.
    assert runtime.mps_has_bf16() is False
    assert runtime.mps_has_fp8() is False


# ------------------------------------------------------------ other per-device choices
def test_timing_waits_for_the_gpu_it_measures(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(f"{device}"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    for device in (CUDA, MPS, CPU):
        metrics.synchronize(device)
    assert calls == ["cuda:0", "mps"]


def test_resume_state_keeps_the_mps_generator(machine, monkeypatch) -> None:
    machine(mps=True)
    restored: list[torch.Tensor] = []
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.mps, "set_rng_state", restored.append)
    state = resume.rng_state()
    assert state["mps"].tolist() == [7]
    resume.set_rng_state(state)
    assert [t.tolist() for t in restored] == [[7]]
