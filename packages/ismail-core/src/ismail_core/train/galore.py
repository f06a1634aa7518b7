"""GaLore (pytorch-optimizer's) with a state dict that checkpoints load with weights_only.

Imported only for `--optim.name galore_adamw`: pytorch-optimizer is an optional dependency
(ismail-core[galore]).
"""

from __future__ import annotations

from pytorch_optimizer import GaLore
from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

# the projector's fields: a tensor (the basis) and numbers
_PROJECTOR_FIELDS = ("rank", "update_proj_gap", "scale", "projection_type", "ortho_matrix")


class CheckpointableGaLore(GaLore):
    """GaLore keeps a GaLoreProjector object per projected matrix in its state; checkpoints
    are read with torch.load(weights_only=True), which refuses arbitrary objects, so the state
    dict carries each projector as a dict of its fields and loading rebuilds it."""

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        for entry in state_dict["state"].values():
            projector = entry.get("projector")
            if isinstance(projector, GaLoreProjector):
                entry["projector"] = {f: getattr(projector, f) for f in _PROJECTOR_FIELDS}
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for entry in self.state.values():
            fields = entry.get("projector")
            if isinstance(fields, dict):
                projector = GaLoreProjector(
                    rank=fields["rank"],
                    update_proj_gap=fields["update_proj_gap"],
                    scale=fields["scale"],
                    projection_type=fields["projection_type"],
                )
                projector.ortho_matrix = fields["ortho_matrix"]
                entry["projector"] = projector
