"""FP8Linear, FP8TrainLinear, model conversion and the FP8 state-dict format (reference path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ismail_kernels import (
    FP8Config,
    FP8Linear,
    FP8TrainLinear,
    act_quant,
    convert_to_fp8_training,
    fp8_quantization_config,
    is_fp8_state_dict,
    load_fp8_state_dict,
    quantize_model,
    weight_quant,
)
from ismail_kernels.reference import expand_block_scales
from torch import nn

BS = 32


def rounding_error(v: torch.Tensor, scale_full: torch.Tensor) -> torch.Tensor:
    """Bound on |v - dequant(quant(v))|: half an fp8 ulp, max(|v| / 16, scale * 2^-10)."""
    return torch.maximum(v.abs() / 16, scale_full * 2.0**-10)


def product_error_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Bound on |fp8(x) @ fp8(w).T - x @ w.T|: |x| e_w + e_x |w| + e_x e_w summed over K."""
    _, x_s = act_quant(x, BS)
    _, w_s = weight_quant(w, BS)
    e_x = rounding_error(x, x_s.repeat_interleave(BS, -1))
    e_w = rounding_error(w, expand_block_scales(w_s, w.shape, BS))
    return x.abs() @ e_w.T + e_x @ w.abs().T + e_x @ e_w.T


def test_fp8_linear_close_to_the_linear_it_replaced():
    torch.manual_seed(0)
    linear = nn.Linear(128, 96)
    x = torch.randn(4, 7, 128)
    fp8 = FP8Linear.from_linear(linear, BS)
    with torch.no_grad():
        exact = linear(x)
        out = fp8(x)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    bound = product_error_bound(x, linear.weight.detach())
    assert torch.all((out - exact).abs() <= bound * (1 + 1e-5) + 1e-6)
    # Typical error is far below the worst case: each operand is off by ~2^-5 relative RMS.
    rel_rms = (out - exact).norm() / exact.norm()
    assert rel_rms < 2.0**-4


def test_fp8_linear_state_dict_uses_deepseek_names():
    layer = FP8Linear.from_linear(nn.Linear(64, 40, bias=True), BS)
    sd = layer.state_dict()
    assert set(sd) == {"weight", "weight_scale_inv", "bias"}
    assert sd["weight"].dtype == torch.float8_e4m3fn and sd["weight"].shape == (40, 64)
    assert sd["weight_scale_inv"].dtype == torch.float32 and sd["weight_scale_inv"].shape == (2, 2)
    assert not any(p.requires_grad for p in layer.parameters())


def test_fp8_linear_keeps_its_formats_through_to_dtype():
    layer = FP8Linear.from_linear(nn.Linear(64, 32), BS)
    before = layer.weight_scale_inv.clone()
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(layer.weight_scale_inv, before)
    assert layer.bias.dtype == torch.bfloat16
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


def test_fp8_linear_rejects_incompatible_shapes():
    with pytest.raises(ValueError, match="multiple of block_size"):
        FP8Linear(48, 32, block_size=32)


class ToyBlock(nn.Module):
    """Names like ismail-core's model and Hugging Face models use."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(64)
        self.wq = nn.Linear(64, 64, bias=False)
        self.wkv_b = nn.Linear(32, 64, bias=False)
        self.gate = nn.Linear(64, 4, bias=False)  # MoE router
        self.gate_proj = nn.Linear(64, 128)  # an MLP projection, not a router
        self.odd = nn.Linear(40, 64)  # in_features not a multiple of the block size
        self.mha = nn.MultiheadAttention(64, 2)


class ToyModel(nn.Module):
    def __init__(self, tie: bool = False):
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        self.blocks = nn.ModuleList([ToyBlock(), ToyBlock()])
        self.proj = nn.Linear(64, 64)
        self.lm_head = nn.Linear(64, 100, bias=False)
        self.head = nn.Linear(64, 64, bias=False)
        self.tied = nn.Linear(64, 100, bias=False)
        if tie:
            self.tied.weight = self.embed.weight


def converted_names(model: nn.Module, cls) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, cls)}


def test_quantize_model_default_skips_by_type_shape_and_tie_only():
    """No layer is kept for its name by default: the caller names its model's layers."""
    model = ToyModel(tie=True)
    with pytest.warns(UserWarning) as record:
        quantize_model(model, FP8Config(block_size=BS))
    assert converted_names(model, FP8Linear) == {
        *(f"blocks.{i}.{name}" for i in (0, 1) for name in ("wq", "wkv_b", "gate", "gate_proj")),
        "proj",
        "lm_head",
        "head",
    }
    messages = " ".join(str(w.message) for w in record)
    assert "blocks.0.odd" in messages and "in_features" in messages
    assert "tied" in messages
    assert isinstance(model.blocks[0].mha.out_proj, nn.Linear)


def test_quantize_model_skip_names_replace_the_defaults():
    model = ToyModel()
    with pytest.warns(UserWarning, match="odd"):
        returned = quantize_model(
            model, FP8Config(block_size=BS, skip_names=("proj", "gate_proj", "lm_head"))
        )
    assert returned is model
    names = converted_names(model, FP8Linear)
    assert {"blocks.0.gate", "blocks.0.wkv_b", "head", "tied"} <= names
    assert not {"proj", "blocks.0.gate_proj", "lm_head"} & names


def test_quantize_model_skip_by_full_name_and_type():
    model = ToyModel()
    config = FP8Config(
        block_size=BS, skip_names=("blocks.1", "*head", "tied"), skip_types=(ToyBlock,)
    )
    quantize_model(model, config)
    assert converted_names(model, FP8Linear) == {"proj"}
    assert isinstance(model.embed, nn.Embedding)  # not a Linear: never converted


def test_fp8_state_dict_roundtrip_through_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    quantize_model(mlp, FP8Config(block_size=BS))
    sd = mlp.state_dict()
    assert is_fp8_state_dict(sd)
    assert set(sd) == {f"{i}.{k}" for i in (0, 2) for k in ("weight", "weight_scale_inv", "bias")}
    path = tmp_path / "model.safetensors"
    safetensors.save_file(sd, str(path))

    fresh = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    load_fp8_state_dict(fresh, safetensors.load_file(str(path)))
    assert converted_names(fresh, FP8Linear) == {"0", "2"}
    assert fresh[0].block_size == BS
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), mlp(x))
    assert fp8_quantization_config(FP8Config(block_size=BS))["weight_block_size"] == [BS, BS]


def test_load_fp8_state_dict_names_problems():
    quantized = quantize_model(nn.Sequential(nn.Linear(64, 64)), FP8Config(block_size=BS))
    sd = quantized.state_dict()
    with pytest.raises(KeyError, match="no module named"):
        load_fp8_state_dict(
            nn.Sequential(nn.Linear(64, 64)), {"1.weight_scale_inv": torch.ones(2, 2)}
        )
    bad = dict(sd, **{"0.weight_scale_inv": torch.ones(3, 2)})
    with pytest.raises(ValueError, match="disagree on the block size"):
        load_fp8_state_dict(nn.Sequential(nn.Linear(64, 64)), bad)
    with pytest.raises(ValueError, match="model's layer"):
        load_fp8_state_dict(nn.Sequential(nn.Linear(64, 32)), sd)


def test_fp8_train_linear_forward_is_fp8_and_backward_straight_through():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    train = FP8TrainLinear.from_linear(linear, BS)
    assert train.weight is linear.weight and train.bias is linear.bias
    x = torch.randn(2, 5, 64, requires_grad=True)
    y = train(x)
    with torch.no_grad():
        assert torch.equal(y, FP8Linear.from_linear(linear, BS)(x))

    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    x_ref = x.detach().requires_grad_()
    w_ref = linear.weight.detach().clone().requires_grad_()
    b_ref = linear.bias.detach().clone().requires_grad_()
    F.linear(x_ref, w_ref, b_ref).backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(linear.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(linear.bias.grad, b_ref.grad, rtol=1e-6, atol=1e-6)


def test_fp8_train_linear_under_autocast_returns_bf16():
    layer = FP8TrainLinear(64, 32, block_size=BS)
    x = torch.randn(3, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32


def test_convert_to_fp8_training_trains_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.Linear(32, 1))
    params_before = list(model.parameters())
    convert_to_fp8_training(model, FP8Config(block_size=BS, skip_names=("3",)))
    assert converted_names(model, FP8TrainLinear) == {"0", "2"}
    assert list(model.parameters()) == params_before  # same Parameter objects
    assert set(model.state_dict()) == {f"{i}.{k}" for i in (0, 2, 3) for k in ("weight", "bias")}

    x = torch.randn(256, 32)
    target = (x[:, :4].sum(-1, keepdim=True)).tanh()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
