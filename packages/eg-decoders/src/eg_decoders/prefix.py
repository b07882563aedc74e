"""Where the prefix goes in a decoder's sequence: before the text (a QA pair: `[prefix | text]`), or at a
per-row text position (a conversation: the media prefix at the start of the turn that holds it, inside
the chat template).

`splice_prefix` builds the sequence of embeddings and its valid mask; `text_index` says where each text
token landed, so logits and labels (which cover the text positions only) are read back with
`take_text`. Masked prefix tokens (a modality a row lacks or dropped, a shorter prefix than the batch's
longest) are removed in effect: the decoders neither attend to them nor count them in positions, so
rows with different prefix lengths batch together.
"""

from __future__ import annotations

import torch


def splice_prefix(
    prefix: torch.Tensor,
    prefix_valid: torch.Tensor,
    text: torch.Tensor,
    text_valid: torch.Tensor,
    at: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[text[:at] | prefix | text[at:]] per row: (embeddings (B, P + T, D), valid (B, P + T) bool,
    text_index (B, T): the sequence position of each text token).

    prefix (B, P, D), prefix_valid (B, P), text (B, T, D), text_valid (B, T); `at` (B,): text tokens
    before the prefix (None: all rows 0, the prefix first).
    """
    batch, num_prefix, width = prefix.shape
    length = text.shape[1]
    columns = torch.arange(length, device=text.device)  # (T,)
    if at is None:
        text_index = (columns + num_prefix).expand(batch, length)  # (B, T)
        embeds = torch.cat([prefix.to(text.dtype), text], dim=1)
        return embeds, torch.cat([prefix_valid.bool(), text_valid.bool()], dim=1), text_index
    at = at.to(text.device).long()
    if bool((at < 0).any()) or bool((at > length).any()):
        raise ValueError(f"prefix positions {at.tolist()} outside the text's {length} tokens")
    text_index = columns[None, :] + num_prefix * (columns[None, :] >= at[:, None]).long()  # (B, T)
    prefix_index = at[:, None] + torch.arange(num_prefix, device=text.device)[None, :]  # (B, P)
    embeds = text.new_zeros(batch, num_prefix + length, width)
    embeds.scatter_(1, text_index[..., None].expand(-1, -1, width), text)
    embeds.scatter_(1, prefix_index[..., None].expand(-1, -1, width), prefix.to(text.dtype))
    valid = torch.zeros(batch, num_prefix + length, dtype=torch.bool, device=text.device)
    valid.scatter_(1, text_index, text_valid.bool())
    valid.scatter_(1, prefix_index, prefix_valid.bool())
    return embeds, valid, text_index


def take_text(hidden: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
    """The states of the text tokens: hidden (B, L, D) at text_index (B, T) -> (B, T, D)."""
    return hidden.gather(1, text_index[..., None].expand(-1, -1, hidden.shape[-1]))


def text_only(
    text: torch.Tensor, text_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sequence of a row without prefix: (text (B, T, D), valid (B, T) bool, text_index (B, T))."""
    batch, length = text.shape[:2]
    index = torch.arange(length, device=text.device).expand(batch, length)
    return text, text_valid.bool(), index
