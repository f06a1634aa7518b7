"""TransformerClassifier: the decoder with a classification head instead of the LM head.

As in "LLMs from scratch" (chapter 6): the final normalised hidden state of each sequence's
last real token, which has attended to the whole text (attention is causal and padding comes
after it), goes through a linear `score` layer (dim -> number of labels). The LM head is
dropped: a classifier never predicts tokens. Which weights train is chosen by
`select_trainable`: the head only, the last N blocks (and the final norm) with it, or all.
A classifier checkpoint is a model checkpoint plus `classifier.json` (the labels, in class id
order, and the data fields they came from); a LoRA classifier keeps its head in
`adapter/classifier_head.safetensors` beside PEFT's adapter.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ismail_core.checkpoint import CheckpointError, resolve_checkpoint
from ismail_core.config import ModelConfig
from ismail_core.layout import ADAPTER_DIR, CLASSIFIER_FILE, CLASSIFIER_HEAD_FILE
from ismail_core.model.transformer import ModelOutput, Transformer
from ismail_core.train.config import ConfigError


@dataclass
class ClassifierInfo:
    """What `classifier.json` holds: the labels (class id i is labels[i]) and the fields of
    the data they were read from."""

    labels: list[str]
    text_field: str = "text"
    label_field: str = "label"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def read_info(path: str | Path) -> ClassifierInfo:
    """The ClassifierInfo of a classifier checkpoint (or run) directory."""
    file = resolve_checkpoint(path) / CLASSIFIER_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        info = ClassifierInfo(
            [str(x) for x in raw["labels"]],
            raw.get("text_field", "text"),
            raw.get("label_field", "label"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file} is missing or corrupt ({exc})") from exc
    if len(info.labels) < 2 or len(set(info.labels)) != len(info.labels):
        raise CheckpointError(f"{file} must list two or more distinct labels")
    return info


class TransformerClassifier(Transformer):
    """The decoder (embedding, blocks, final norm) with a `score` head over the hidden state
    of each sequence's last real token; `info` holds the labels.

    model(input_ids, last_index=...) -> logits (B, n_labels); with labels (B,) class ids ->
    ModelOutput whose lm_loss is the cross-entropy of the labels and loss adds the MoE
    balance loss, as the trainer expects of a language model."""

    def __init__(self, cfg: ModelConfig, info: ClassifierInfo):
        super().__init__(cfg)
        # No LM head: the classifier predicts labels, not tokens (and its forward, below, is
        # the only one that runs; Transformer's methods that read the head are not called).
        self.head = None  # type: ignore[assignment]
        self.info = info
        self.score = nn.Linear(cfg.dim, len(info.labels))
        nn.init.normal_(self.score.weight, std=cfg.init_std)
        nn.init.zeros_(self.score.bias)

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    # Not Transformer's signature: a classifier has no cache, positions or routing outputs.
    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        last_index: torch.Tensor | None = None,
        return_output: bool = False,
    ) -> torch.Tensor | ModelOutput:
        """input_ids (B, T), right-padded; last_index (B,) the position of each row's last
        real token (default: T - 1, no padding); labels (B,) class ids."""
        h, stats = self.hidden_states(input_ids)
        logits = self.score(pool_last(h, last_index))
        if labels is None and not return_output:
            return logits
        zero = torch.zeros((), device=input_ids.device)
        aux = sum((s.aux_loss for s in stats), zero)
        out = ModelOutput(
            logits=logits,
            aux_loss=aux,
            expert_load=[s.load for s in stats],
            dropped_tokens=sum((s.dropped for s in stats), zero.long()),
            router_entropy=[s.entropy for s in stats if s.entropy is not None],
        )
        if labels is not None:
            out.lm_loss = F.cross_entropy(logits.float(), labels)
            out.loss = out.lm_loss + aux
        return out

    def checkpoint_files(self) -> dict[str, str]:
        """Files save_checkpoint writes beside the weights: the label mapping."""
        return {CLASSIFIER_FILE: self.info.to_json()}


def pool_last(h: torch.Tensor, last_index: torch.Tensor | None) -> torch.Tensor:
    """(B, T, dim) hidden states -> (B, dim): each row's state at last_index (default T - 1)."""
    if last_index is None:
        return h[:, -1]
    return h[torch.arange(h.shape[0], device=h.device), last_index.to(h.device)]


def from_language_model(model: Transformer, info: ClassifierInfo) -> TransformerClassifier:
    """A classifier with `model`'s weights (the LM head left out) and a new random head (from
    torch's global generator: seed it first for a reproducible start)."""
    classifier = TransformerClassifier(model.cfg, info)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"score.weight", "score.bias"}:
        raise CheckpointError(
            f"the base model does not fit a classifier: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return classifier.to(model.embed.weight.dtype)


def trained_blocks(train: str, n_layers: int) -> int:
    """How many of the last blocks `train` (classify.train) trains: 0 for head, N for last-N,
    n_layers for all. Raises ConfigError for anything else."""
    if train == "head":
        return 0
    if train == "all":
        return n_layers
    match = re.fullmatch(r"last-(\d+)", train)
    if match and 1 <= int(match[1]) <= n_layers:
        return int(match[1])
    raise ConfigError(
        f"classify.train must be head, last-N (N from 1 to this model's {n_layers} blocks) or "
        f"all, not {train!r}"
    )


def select_trainable(model: TransformerClassifier, train: str) -> None:
    """Freeze everything but what `train` names: head (the score layer), last-N (the last N
    blocks, the final norm and the head) or all (every weight)."""
    n = trained_blocks(train, len(model.layers))
    everything = train == "all"
    for param in model.parameters():
        param.requires_grad_(everything)
    if everything:
        return
    parts = [model.score] + ([*model.layers[-n:], model.norm] if n else [])
    for part in parts:
        for param in part.parameters():
            param.requires_grad_(True)


def save_head(model: TransformerClassifier, directory: Path) -> None:
    """Write the score layer into `directory` (a LoRA classifier's adapter folder)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.score.state_dict().items()}
    save_file(state, str(directory / CLASSIFIER_HEAD_FILE), metadata={"format": "pt"})


def load_head(model: TransformerClassifier, directory: Path) -> None:
    """Load the score layer that save_head wrote into `directory`."""
    from safetensors.torch import load_file

    file = directory / CLASSIFIER_HEAD_FILE
    try:
        state = load_file(str(file))
        model.score.load_state_dict({k: v.to(model.score.weight.dtype) for k, v in state.items()})
    except Exception as exc:  # safetensors' own errors for missing/truncated files, shapes
        raise CheckpointError(f"{file} is missing or does not fit the classifier ({exc})") from exc


def load_lora_classifier(checkpoint: Path, merge: bool = True) -> TransformerClassifier:
    """The classifier of a LoRA checkpoint: its base model with the adapter and the saved head,
    the adapter merged into the weights (or kept as LoRA layers with merge=False)."""
    from ismail_core.finetune import lora

    model = from_language_model(lora.load_base(checkpoint), read_info(checkpoint))
    lora.load_adapter(model, checkpoint / ADAPTER_DIR)
    load_head(model, checkpoint / ADAPTER_DIR)
    return lora.merge_lora(model) if merge else model
