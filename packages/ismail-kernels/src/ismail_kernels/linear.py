"""Linear layers on FP8: FP8Linear for inference, FP8TrainLinear for training."""

from __future__ import annotations

import torch
from torch import nn

from .formats import DEFAULT_BLOCK_SIZE, FP8_DTYPE
from .ops import (
    _OUTPUT_DTYPES,
    _check_scale_fmt,
    _expected_weight_scale_shape,
    act_quant,
    fp8_gemm,
    weight_dequant,
    weight_quant,
)


def _output_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer returns for input x: autocast's if active, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype if x.dtype in _OUTPUT_DTYPES else torch.bfloat16


def _check_layer_shape(in_features: int, block_size: int, scale_fmt: str | None) -> None:
    if in_features % block_size:
        raise ValueError(
            f"an FP8 linear layer needs in_features to be a multiple of block_size; got "
            f"in_features={in_features}, block_size={block_size} (use a smaller power-of-two "
            "block_size or keep this layer in high precision)"
        )
    _check_scale_fmt(scale_fmt)


class FP8Linear(nn.Module):
    """y = x @ W.T + b with W in float8_e4m3fn and one fp32 scale per block (inference only).

    State dict (DeepSeek-V3 naming): `weight` (out, in) float8_e4m3fn, `weight_scale_inv`
    (ceil(out / bs), in / bs) float32 with W ~= weight * scale blockwise, and `bias` if any.
    forward quantizes x per 1 x block_size group (act_quant) and runs fp8_gemm; the output has
    x's dtype (bfloat16 for other dtypes). `.to(dtype)` moves but never re-types the FP8 weight
    and its scales.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        block_size: int = DEFAULT_BLOCK_SIZE,
        scale_fmt: str | None = None,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        _check_layer_shape(in_features, block_size, scale_fmt)
        self.in_features = in_features
        self.out_features = out_features
        self.block_size = block_size
        self.scale_fmt = scale_fmt
        scale_shape = _expected_weight_scale_shape((out_features, in_features), block_size)
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=FP8_DTYPE, device=device),
            requires_grad=False,
        )
        self.weight_scale_inv = nn.Parameter(
            torch.ones(scale_shape, dtype=torch.float32, device=device), requires_grad=False
        )
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    @classmethod
    def shaped_like(
        cls, linear: nn.Linear, block_size: int = DEFAULT_BLOCK_SIZE, scale_fmt: str | None = None
    ) -> FP8Linear:
        """An FP8Linear with linear's shape, bias and device, holding no weights yet."""
        return cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            block_size=block_size,
            scale_fmt=scale_fmt,
            device=linear.weight.device,
            bias_dtype=linear.bias.dtype if linear.bias is not None else torch.bfloat16,
        )

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls,
        linear: nn.Linear,
        block_size: int = DEFAULT_BLOCK_SIZE,
        scale_fmt: str | None = None,
        backend: str = "auto",
    ) -> FP8Linear:
        """Quantize an nn.Linear's weight into a new FP8Linear on the same device."""
        layer = cls.shaped_like(linear, block_size, scale_fmt)
        w_fp8, scale = weight_quant(linear.weight.detach(), block_size, backend=backend)
        layer.weight.copy_(w_fp8)
        layer.weight_scale_inv.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = _output_dtype(x)
        x_fp8, x_scale = act_quant(x, self.block_size, self.scale_fmt)
        y = fp8_gemm(x_fp8, x_scale, self.weight, self.weight_scale_inv, out_dtype=out_dtype)
        if self.bias is not None:
            y = y + self.bias.to(out_dtype)
        return y

    def dequantized_weight(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The weight in high precision (for code that needs the matrix itself, e.g. MLA absorb)."""
        return weight_dequant(self.weight, self.weight_scale_inv, self.block_size, dtype)

    def _apply(self, fn, recurse=True):
        # nn.Module.to(dtype) re-types every floating tensor, FP8 included; keep the stored
        # formats (fp8 weight, fp32 scales) and apply only the device move.
        weight, scale = self.weight.detach(), self.weight_scale_inv.detach()
        super()._apply(fn, recurse)
        self.weight = nn.Parameter(weight.to(self.weight.device), requires_grad=False)
        self.weight_scale_inv = nn.Parameter(
            scale.to(self.weight_scale_inv.device), requires_grad=False
        )
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, block_size={self.block_size}, "
            f"scale_fmt={self.scale_fmt}"
        )


class _FP8MatmulStraightThrough(torch.autograd.Function):
    """x @ W.T computed in FP8 (both operands quantized this step); gradients as if unquantized.

    The straight-through estimator treats the quantizers as the identity: backward is the plain
    high-precision matmul gradient, in the forward's output dtype (bf16 under autocast).
    """

    @staticmethod
    def forward(ctx, x, weight, block_size, scale_fmt, out_dtype):
        x_fp8, x_scale = act_quant(x.detach(), block_size, scale_fmt)
        w_fp8, w_scale = weight_quant(weight.detach(), block_size)
        ctx.save_for_backward(x, weight)
        ctx.compute_dtype = out_dtype
        return fp8_gemm(x_fp8, x_scale, w_fp8, w_scale, out_dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad_out = grad_out.to(dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_out @ weight.to(dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
            grad_w = (grad_2d.T @ x.reshape(-1, x.shape[-1]).to(dtype)).to(weight.dtype)
        return grad_x, grad_w, None, None, None


class FP8TrainLinear(nn.Linear):
    """nn.Linear whose forward runs in FP8 with a straight-through high-precision backward.

    Keeps the ordinary high-precision `weight` (the master copy the optimizer updates) and
    state dict; each forward quantizes the activation (1 x block_size) and the weight
    (block_size x block_size) and calls fp8_gemm.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        block_size: int = DEFAULT_BLOCK_SIZE,
        scale_fmt: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        _check_layer_shape(in_features, block_size, scale_fmt)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.block_size = block_size
        self.scale_fmt = scale_fmt

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, block_size: int = DEFAULT_BLOCK_SIZE, scale_fmt: str | None = None
    ) -> FP8TrainLinear:
        """A FP8TrainLinear sharing linear's Parameter objects (optimizer state stays valid)."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            block_size=block_size,
            scale_fmt=scale_fmt,
            device="meta",
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = _output_dtype(x)
        y = _FP8MatmulStraightThrough.apply(
            x, self.weight, self.block_size, self.scale_fmt, out_dtype
        )
        if self.bias is not None:
            y = y + self.bias.to(out_dtype)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}, scale_fmt={self.scale_fmt}"
