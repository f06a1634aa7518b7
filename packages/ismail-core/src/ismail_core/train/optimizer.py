"""The optimizers `--optim.name` chooses: AdamW, Muon + AdamW, GaLore-AdamW, 8-bit AdamW.

- adamw: torch's AdamW with weight decay on matrices only.
- muon: torch's Muon (train/muon.py: float32 orthogonalisation where bfloat16 is emulated)
  for the hidden matrices (the 2-D weights inside the blocks: attention
  projections, including MLA's low-rank pairs wq_a/wq_b and wkv_a/wkv_b, each orthogonalised
  on its own as Moonlight does; dense and expert feed-forward weights, each expert separately
  since each is its own matrix; w13 holds gate and up stacked and is orthogonalised as one
  matrix), AdamW for everything else (embedding, LM head, norms, the router's gate weights
  and biases), as in the modded-nanogpt speedrun and nanochat.
- galore_adamw: pytorch-optimizer's GaLore (AdamW whose moments live in a low-rank projection
  of each hidden matrix's gradient, refreshed every `galore_update_interval` steps); chosen
  over galore-torch because it is maintained and pure PyTorch (galore-torch has had one
  release, in 2024, and requires transformers and bitsandbytes).
- adamw8bit: bitsandbytes' 8-bit AdamW (CUDA only).

Each parameter group carries `lr_scale`, its peak learning rate over `optim.lr`: the schedule
(`lr_schedule.set_lr`) moves every group by the same factor, so Muon keeps its own peak.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ismail_core.errors import IsmailError
from ismail_core.runtime import native_bf16
from ismail_core.train.config import OptimSection
from ismail_core.train.muon import Muon


class OptimizerError(IsmailError, RuntimeError):
    """The requested optimizer cannot run here (missing package, no CUDA, FSDP)."""


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is a matrix inside a transformer block other than the MoE router:
    the weights Muon orthogonalises and GaLore projects."""
    return param.ndim == 2 and name.startswith("layers.") and ".gate." not in name


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never decay biases, norms or gate biases.

    Only parameters trainable now are included: a frozen base under LoRA gets no optimizer
    state. Expert rotation freezes experts only after the optimizer is built, so it sees
    them all; AdamW skips parameters whose grad is None and keeps no state for them.
    """
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for _, param in _trainable(model):
        (decay if param.ndim >= 2 else no_decay).append(param)
    return _groups(decay, no_decay, weight_decay)


def build_optimizer(
    model: torch.nn.Module, cfg: OptimSection, device: torch.device, sharded: bool = False
) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name`, over `model`'s trainable parameters. `sharded`:
    the model is FSDP-sharded (Muon and GaLore need whole matrices, so they refuse it)."""
    if sharded and cfg.name in ("muon", "galore_adamw"):
        raise OptimizerError(
            f"optim.name={cfg.name} needs each matrix whole on every rank, which FSDP shards; "
            "use --dist.strategy ddp or --optim.name adamw"
        )
    if cfg.name == "adamw":
        # The fused kernel exists for CUDA only; foreach is the fast path on CPU.
        groups = param_groups(model, cfg.weight_decay)
        return torch.optim.AdamW(
            groups,
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            fused=device.type == "cuda",
        )
    if cfg.name == "muon":
        return _muon_and_adamw(model, cfg, device)
    if cfg.name == "galore_adamw":
        return _galore(model, cfg)
    if cfg.name == "adamw8bit":
        return _adamw8bit(model, cfg, device)
    raise OptimizerError(f"unknown optimizer {cfg.name!r}; use adamw, muon or galore_adamw")


def _trainable(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


def _groups(decay: list, no_decay: list, weight_decay: float, **extra) -> list[dict]:
    groups = [
        {"params": decay, "weight_decay": weight_decay, **extra},
        {"params": no_decay, "weight_decay": 0.0, **extra},
    ]
    return [g for g in groups if g["params"]]


def _split_hidden(model: torch.nn.Module) -> tuple[list, list, list]:
    """Trainable parameters as (hidden matrices, other matrices, vectors)."""
    hidden: list[torch.Tensor] = []
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for name, param in _trainable(model):
        if is_hidden_matrix(name, param):
            hidden.append(param)
        else:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return hidden, decay, no_decay


def _muon_and_adamw(model: torch.nn.Module, cfg: OptimSection, device) -> torch.optim.Optimizer:
    hidden, decay, no_decay = _split_hidden(model)
    if not hidden:
        raise OptimizerError(
            "optim.name=muon found no trainable matrix inside the blocks to orthogonalise; "
            "use --optim.name adamw"
        )
    muon = Muon(
        [{"params": hidden, "lr_scale": cfg.muon_lr / cfg.lr}],
        float32_iteration=not native_bf16(device),
        lr=cfg.muon_lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.muon_momentum,
        adjust_lr_fn="match_rms_adamw",
    )
    adamw = torch.optim.AdamW(
        _groups(decay, no_decay, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=device.type == "cuda",
    )
    return OptimizerChain({"muon": muon, "adamw": adamw})


def _galore(model: torch.nn.Module, cfg: OptimSection) -> torch.optim.Optimizer:
    try:
        from ismail_core.train.galore import CheckpointableGaLore
    except ImportError as exc:
        raise OptimizerError(
            "optim.name=galore_adamw needs pytorch-optimizer: install ismail-core[galore] "
            "(`uv pip install 'ismail-core[galore]'`) or use --optim.name adamw"
        ) from exc
    if any(".lora_" in name for name, _ in _trainable(model)):
        raise OptimizerError(
            "optim.name=galore_adamw with LoRA: the adapters are low-rank already, so "
            "there is nothing to project; use --optim.name adamw (or drop --lora)"
        )
    projected, decay, no_decay = _split_hidden(model)
    low_rank = {
        "rank": cfg.galore_rank,
        "update_proj_gap": cfg.galore_update_interval,
        "scale": cfg.galore_scale,
        "projection_type": "std",
    }
    groups = [{"params": projected, "weight_decay": cfg.weight_decay, **low_rank}]
    groups += _groups(decay, no_decay, cfg.weight_decay)
    return CheckpointableGaLore(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )


def _adamw8bit(model: torch.nn.Module, cfg: OptimSection, device) -> torch.optim.Optimizer:
    if device.type != "cuda":
        raise OptimizerError(
            "optim.name=adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit optimizer states "
            f"live on the GPU); use --optim.name adamw on {device.type}"
        )
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise OptimizerError(
            "optim.name=adamw8bit needs bitsandbytes: install ismail-core[bnb] "
            "(`uv pip install 'ismail-core[bnb]'`) or use --optim.name adamw"
        ) from exc
    groups = param_groups(model, cfg.weight_decay)
    return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


class OptimizerChain(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, used as one (Muon for the hidden matrices,
    AdamW for the rest). torch has no such container; this one shares the children's own
    parameter-group dicts, so the learning-rate schedule, gradient clipping and GradScaler
    see every group, and saves {name: child state dict}."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        groups = [g for opt in optimizers.values() for g in opt.param_groups]
        super().__init__([{"params": g["params"]} for g in groups], {})
        self.param_groups = groups  # the children's dicts, not copies

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        missing = set(self.optimizers) - set(state_dict)
        if missing:
            raise OptimizerError(
                f"the saved optimizer state has no {sorted(missing)} part: it was saved by "
                "another --optim.name; resume with the optimizer it was trained with"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])
        # loading gives each child new group dicts: share those, or the schedule would set
        # learning rates nobody reads
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]
