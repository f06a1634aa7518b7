"""`--optim.name`: Muon + AdamW and GaLore beside AdamW: parameter split, schedule, exact
resume, clear errors for combinations that cannot work."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch
from ismail_core.checkpoint import WEIGHTS_FILE, load_weights, resolve_checkpoint
from ismail_core.config import ModelConfig
from ismail_core.model.transformer import Transformer
from ismail_core.runtime import native_bf16
from ismail_core.train import build_config, train
from ismail_core.train.config import OptimSection
from ismail_core.train.lr_schedule import set_lr
from ismail_core.train.metrics import read_metrics
from ismail_core.train.muon import Muon, orthogonalize
from ismail_core.train.optimizer import (
    OptimizerChain,
    OptimizerError,
    build_optimizer,
    is_hidden_matrix,
)

CPU = torch.device("cpu")


@pytest.fixture
def model(tiny_model_config) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=384, **tiny_model_config))


def _names(model: torch.nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_muon_takes_the_block_matrices_and_adamw_the_rest(model) -> None:
    chain = build_optimizer(model, OptimSection(name="muon", muon_lr=0.02), CPU)
    assert isinstance(chain, OptimizerChain)
    muon = _names(model, (p for g in chain.optimizers["muon"].param_groups for p in g["params"]))
    adamw = _names(model, (p for g in chain.optimizers["adamw"].param_groups for p in g["params"]))
    assert muon.isdisjoint(adamw) and muon | adamw == {n for n, _ in model.named_parameters()}
    assert {"layers.0.attn.wkv_a.weight", "layers.0.attn.wkv_b.weight"} <= muon  # MLA pair
    assert {"layers.1.ffn.experts.0.w13.weight", "layers.1.ffn.shared_experts.w2.weight"} <= muon
    assert {"embed.weight", "head.weight", "norm.weight", "layers.1.ffn.gate.weight"} <= adamw
    assert all(is_hidden_matrix(n, dict(model.named_parameters())[n]) for n in muon)


def test_the_schedule_keeps_muons_own_peak(model) -> None:
    chain = build_optimizer(model, OptimSection(name="muon", lr=1e-3, muon_lr=0.02), CPU)
    set_lr(chain, 5e-4)  # half-way down the schedule
    muon_lrs = [g["lr"] for g in chain.optimizers["muon"].param_groups]
    adamw_lrs = [g["lr"] for g in chain.optimizers["adamw"].param_groups]
    assert muon_lrs == pytest.approx([0.01]) and adamw_lrs == [5e-4, 5e-4]


def test_a_chain_step_is_the_step_of_its_parts(model, tiny_model_config) -> None:
    """The chain steps Muon and AdamW: the same update as using them directly."""
    torch.manual_seed(0)
    twin = Transformer(ModelConfig(vocab_size=384, **tiny_model_config))
    twin.load_state_dict(model.state_dict())
    cfg = OptimSection(name="muon", muon_lr=0.02)
    chain = build_optimizer(model, cfg, CPU)
    hidden = [p for n, p in twin.named_parameters() if is_hidden_matrix(n, p)]
    rest = [p for n, p in twin.named_parameters() if not is_hidden_matrix(n, p)]
    muon = Muon(
        hidden,
        float32_iteration=not native_bf16(CPU),  # as build_optimizer chooses on this CPU
        lr=0.02,
        weight_decay=cfg.weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    matrices = [p for p in rest if p.ndim >= 2]
    vectors = [p for p in rest if p.ndim < 2]
    adamw = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": vectors}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=0.0,
    )
    ids = torch.randint(0, 384, (2, 16))
    for net, opts in [(model, [chain]), (twin, [muon, adamw])]:
        for _ in range(2):
            net(ids, ids).loss.backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_float32_muon_steps_like_torchs_muon(monkeypatch) -> None:
    """Momentum, Nesterov, weight decay and the per-matrix learning rate are torch's: with
    torch's bfloat16 iteration swapped for ours, the two optimizers agree to float rounding."""
    import torch.optim._muon as torch_muon

    def iteration(grad, ns_coefficients, ns_steps, eps):
        group = {"ns_coefficients": ns_coefficients, "ns_steps": ns_steps, "eps": eps}
        return orthogonalize(grad, group)

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", iteration)
    torch.manual_seed(0)
    shapes = [(48, 32), (32, 80), (64, 64)]
    ours = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    kw = dict(lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    opts = [Muon(ours, float32_iteration=True, **kw), torch.optim.Muon(theirs, **kw)]
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for params, opt in zip([ours, theirs], opts):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b, a0 in zip(ours, theirs, start):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(a.detach(), a0, atol=1e-3)  # it did move


def test_float32_iteration_is_torchs_up_to_bfloat16_rounding() -> None:
    from torch.optim._muon import _zeropower_via_newtonschulz

    torch.manual_seed(0)
    group = {"ns_coefficients": (3.4445, -4.775, 2.0315), "ns_steps": 5, "eps": 1e-7}
    for shape in [(96, 32), (32, 96)]:
        grad = torch.randn(shape)
        want = _zeropower_via_newtonschulz(grad, group["ns_coefficients"], 5, 1e-7).float()
        got = orthogonalize(grad, group)
        assert got.shape == shape
        assert (got - want).norm() < 0.05 * want.norm()


@pytest.mark.parametrize("name", ["muon", "galore_adamw"])
def test_fsdp_is_refused_by_whole_matrix_optimizers(model, name: str) -> None:
    with pytest.raises(OptimizerError, match=f"{name}.*FSDP.*--dist.strategy ddp"):
        build_optimizer(model, OptimSection(name=name), CPU, sharded=True)


def test_galore_without_its_package_names_the_extra(model, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_pytorch_optimizer(name, *args, **kwargs):
        if name.startswith("pytorch_optimizer"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pytorch_optimizer)
    with pytest.raises(OptimizerError, match=r"ismail-core\[galore\]"):
        build_optimizer(model, OptimSection(name="galore_adamw"), CPU)


def test_galore_refuses_lora_adapters(model) -> None:
    from ismail_core.finetune.lora import LoraSettings, add_lora

    add_lora(model, LoraSettings(rank=4))
    with pytest.raises(OptimizerError, match="LoRA.*low-rank already.*--optim.name adamw"):
        build_optimizer(model, OptimSection(name="galore_adamw"), CPU)


def test_galore_keeps_low_rank_moments_for_the_block_matrices(model) -> None:
    cfg = OptimSection(name="galore_adamw", galore_rank=4, galore_update_interval=2)
    optimizer = build_optimizer(model, cfg, CPU)
    ids = torch.randint(0, 384, (2, 16))
    model(ids, ids).loss.backward()
    optimizer.step()
    params = dict(model.named_parameters())
    for name in ("layers.0.attn.wq.weight", "layers.1.ffn.experts.0.w13.weight"):
        moment = optimizer.state[params[name]]["exp_avg"]
        assert min(moment.shape) == 4, (name, moment.shape)
    assert optimizer.state[params["head.weight"]]["exp_avg"].shape == params["head.weight"].shape
    saved = optimizer.state_dict()  # projectors as plain fields: loadable with weights_only
    torch.save(saved, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "optim",
    [
        {"optim.name": "adamw"},
        {"optim.name": "muon", "optim.muon_lr": 0.02},
        # the projection is refreshed every 2 steps: on both sides of the interruption
        {"optim.name": "galore_adamw", "optim.galore_rank": 4, "optim.galore_update_interval": 2},
    ],
    ids=lambda o: o["optim.name"],
)
def test_interrupted_run_resumes_exactly(
    tmp_path: Path, tiny_train_layer, tiny_data: Path, optim: dict
) -> None:
    overrides = {"train.grad_accum": 2, "checkpoint.interval": 0, **optim}
    overrides["model.router_noise"] = 0.1

    def make(directory: Path):
        return build_config(tiny_train_layer(directory / "run", tiny_data, **overrides))

    straight = train(make(tmp_path / "a"))
    assert straight.evals[-1]["loss"] < straight.evals[0]["loss"]

    def stop_at_3(step: int, trainer) -> None:
        if step == 3:
            raise KeyboardInterrupt

    resumed = make(tmp_path / "b")
    first = train(resumed, on_step=stop_at_3)
    assert first.interrupted and first.step == 3
    assert resolve_checkpoint(tmp_path / "b" / "run").name == "step_00000003"
    second = train(resumed)
    assert second.step == 8 and not second.interrupted

    a = load_weights(resolve_checkpoint(tmp_path / "a" / "run") / WEIGHTS_FILE)
    b = load_weights(resolve_checkpoint(tmp_path / "b" / "run") / WEIGHTS_FILE)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = [
        {r["step"]: r["loss"] for r in read_metrics(tmp_path / run / "run") if r["kind"] == "train"}
        for run in ("a", "b")
    ]
    assert losses[0] == losses[1]


def test_resuming_with_another_optimizer_is_refused(
    tmp_path: Path, tiny_train_layer, tiny_data: Path
) -> None:
    flags = tiny_train_layer(
        tmp_path / "run", tiny_data, **{"train.steps": 2, "optim.name": "adamw"}
    )
    train(build_config(flags))
    flags.update({"train.steps": 4, "optim.name": "muon"})
    with pytest.raises(OptimizerError, match="--optim.name adamw.*does not fit muon"):
        train(build_config(flags))


def test_pre_training_defaults_to_muon_and_fine_tuning_to_adamw() -> None:
    from ismail_core.finetune.config import FinetuneConfig
    from ismail_core.train.config import TrainConfig

    assert TrainConfig().optim.name == "muon"
    assert FinetuneConfig().optim.name == "adamw"
