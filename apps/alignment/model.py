"""The stage-1 alignment model: per modality encoder -> (resampler) -> pooling -> Matryoshka projection,
and per modality pair a contrastive loss plus a Matryoshka (MRL) loss.

`forward(batch)` follows eg-train's contract: it returns `loss` and the named parts
`"<pair>/contrastive"` and `"<pair>/mrl"` (unweighted), plus `"<pair>/logit_scale"`. A pair is trained on
the samples that have both modalities: `text_present` is False for captions removed by text dropout, so
those rows are neither positives nor negatives (several empty captions would otherwise be false negatives).

In eval mode the MRL term uses every dim with its weight instead of drawing dims, so validation never
advances the training-time dim generator and is comparable across steps; it is scaled to the expected value
of the training draw (k of n dims), so validation and training losses share one scale.

The towers are eg-encoders' `ModalityTower` (eg_encoders/tower.py), the class an exported folder loads, so
a checkpoint's tower keys (`towers.<modality>.encoder|resampler|pooling|projection.*`) and an export's are
one layout.
"""

from __future__ import annotations

from typing import Any

import torch
from eg_encoders.tower import ModalityTower  # noqa: F401  (the towers' class: eg-encoders' own, one for all)
from eg_losses import MatryoshkaLossConfig, resolve_mrl_dims
from torch import nn

from apps.alignment.config import BATCH_KEY, AlignmentConfig


class AlignmentModel(nn.Module):
    """Towers for the configured modalities and, per pair, ContrastiveLoss + MatryoshkaLoss (sharing a temperature)."""

    def __init__(self, cfg: AlignmentConfig, towers: nn.ModuleDict) -> None:
        super().__init__()
        self.cfg = cfg
        self.towers = towers  # {modality: ModalityTower}, built by apps.alignment.build.build_towers
        self.max_dim = cfg.model.projection.max_dim
        losses = cfg.losses
        self.mrl_dims = resolve_mrl_dims(losses.mrl_dims, self.max_dim)
        sampled = 1 if losses.sample_single_mrl_dim else losses.num_sampled_mrl_dims
        self.mrl_dims_per_step = sampled or len(self.mrl_dims)  # k of the n dims trained each step
        self.pairs = list(cfg.model.pairs)
        self.pair_weights = {pair: float(losses.pair_weights.get(pair, 1.0)) for pair in self.pairs}
        self.contrastive = nn.ModuleDict()
        self.mrl = nn.ModuleDict()
        for index, pair in enumerate(self.pairs):
            self.contrastive[pair] = losses.infonce.build()
            mrl_cfg = MatryoshkaLossConfig(
                dims=list(self.mrl_dims),
                weights=None if losses.mrl_weights is None else list(losses.mrl_weights),
                sample_single_mrl_dim=losses.sample_single_mrl_dim,
                num_sampled_dims=losses.num_sampled_mrl_dims,
                seed=cfg.seed + index,
            )
            self.mrl[pair] = mrl_cfg.build(self.contrastive[pair], self.max_dim)

    def embed(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Projections of every configured modality: {modality: (B, max_dim)}, zeros in rows that lack it.

        The vision and audio towers encode only the rows where their modality is present: a mixture source
        without audio gives all-padding log-mels, which the audio encoder refuses, and a batch of a source
        without images should not pay for the vision tower. The losses never read the zero rows (they mask
        by presence).
        """
        size = len(batch["key"]) if "key" in batch else None
        out: dict[str, torch.Tensor] = {}
        for name, tower in self.towers.items():
            mask = batch.get(f"{BATCH_KEY[name]}_present")
            # text dropout leaves "" captions that the text tower encodes as usual (the losses mask them)
            if name == "text" or mask is None or bool(mask.all()):
                out[name] = tower(batch)
                continue
            mask = mask.bool()
            rows = torch.zeros(size or mask.shape[0], self.max_dim, device=mask.device)
            if bool(mask.any()):
                rows[mask] = tower(_select_rows(batch, mask)).to(rows.dtype)
            else:  # nothing to encode: a zero that still reaches the tower's trainable weights (DDP)
                rows = rows + 0.0 * sum(p.sum() for p in tower.parameters() if p.requires_grad)
            out[name] = rows
        return out

    @staticmethod
    def present(batch: dict[str, Any], modality: str, size: int, device: torch.device) -> torch.Tensor:
        """(B,) bool: which samples have `modality` (all of them when the batch has no presence mask)."""
        mask = batch.get(f"{BATCH_KEY[modality]}_present")
        if mask is None:
            return torch.ones(size, dtype=torch.bool, device=device)
        return mask.to(device=device, dtype=torch.bool)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The batch dict -> {"loss", "<pair>/contrastive", "<pair>/mrl", "<pair>/logit_scale"}.

        A pair without a single sample that has both sides (a mixture batch from a source that lacks one)
        adds its zero loss but reports no parts, so the logged per-pair curves average only the steps that
        trained the pair.
        """
        z = self.embed(batch)
        any_z = next(iter(z.values()))
        size, device = any_z.shape[0], any_z.device
        out: dict[str, torch.Tensor] = {}
        total = any_z.new_zeros(())
        w_con, w_mrl = self.cfg.losses.contrastive, self.cfg.losses.mrl
        for pair in self.pairs:
            first, second = pair.split("_")
            valid = self.present(batch, first, size, device) & self.present(batch, second, size, device)
            report = bool(valid.any())
            a, b = z[first], z[second]  # (B, max_dim) each
            pair_loss = any_z.new_zeros(())
            con, mrl = self._pair_terms(pair, a, b, valid)
            if con is not None:
                if report:
                    out[f"{pair}/contrastive"] = con
                pair_loss = pair_loss + w_con * con
            if mrl is not None:
                if report:
                    out[f"{pair}/mrl"] = mrl
                pair_loss = pair_loss + w_mrl * mrl
            out[f"{pair}/logit_scale"] = self.contrastive[pair].logit_scale.detach()
            total = total + self.pair_weights[pair] * pair_loss
        out["loss"] = total
        return out

    def _pair_terms(
        self, pair: str, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(contrastive term at max_dim, MRL term) of one pair, unweighted; None for a term weighted 0.

        Both come from one fused pass of eg-losses (`MatryoshkaLoss.losses_at`): the contrastive term is
        the InfoNCE at max_dim of the same module, so it is taken from that pass (it is MRL's top dim when
        max_dim is among the dims) rather than computed a second time.

        In eval mode the MRL term uses every dim, drawing nothing, on the training loss's scale: training
        sums the weighted losses of the k dims it draws out of n (k = n when all are used), so its expected
        value is k/n times the weighted sum over all dims; validation reports exactly that (the full sum
        when every dim is trained, the mean when one dim is drawn), so both curves share an axis.
        """
        w_con, w_mrl = self.cfg.losses.contrastive, self.cfg.losses.mrl
        if w_mrl <= 0:
            return (self.contrastive[pair](a, b, valid=valid) if w_con > 0 else None), None
        mrl = self.mrl[pair]
        dims = mrl.select_dims() if self.training else list(mrl.dims)
        parts = mrl.losses_at(a, b, [*dims, self.max_dim] if w_con > 0 else dims, valid=valid)
        total = mrl.weighted_sum({d: parts[d] for d in dims})
        if not self.training:
            total = total * (self.mrl_dims_per_step / len(mrl.dims))
        return (parts[self.max_dim] if w_con > 0 else None), total

    def param_groups(self, default_lr: float) -> list[dict[str, Any]]:
        """AdamW groups: each tower's trainable encoder weights at its `lr` (-1 = default), the rest at default.

        Biases and norms (1-D tensors) and the temperatures get no weight decay, as in CLIP.
        """
        groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for name, tower in self.towers.items():
            tower_lr = getattr(self.cfg.model, name).lr
            lr = default_lr if tower_lr < 0 else tower_lr
            params = [p for p in tower.encoder.parameters() if p.requires_grad]
            seen.update(id(p) for p in params)
            groups += _split_decay(params, lr, f"{name}.encoder")
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in seen]
        groups += _split_decay(rest, default_lr, "heads")
        return [g for g in groups if g["params"]]


def _select_rows(batch: dict[str, Any], mask: torch.Tensor) -> dict[str, Any]:
    """The batch's rows where `mask` (B,) is True: tensors indexed, lists of strings filtered."""
    index = mask.nonzero().squeeze(1).tolist()
    return {
        k: v[mask.to(v.device)]
        if torch.is_tensor(v) and v.ndim and v.shape[0] == mask.shape[0]
        else [v[i] for i in index]
        if isinstance(v, list) and len(v) == mask.shape[0]
        else v
        for k, v in batch.items()
    }


def _split_decay(params: list[nn.Parameter], lr: float, name: str) -> list[dict[str, Any]]:
    """Two groups: matrices with weight decay, and 1-D/0-D tensors (biases, norms, temperatures) without."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [
        {"params": decay, "lr": lr, "name": f"{name}"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"},
    ]
