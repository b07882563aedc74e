"""Model FLOPs of the GPU benchmark's training steps: pure functions of the shapes, forward plus what backward
computes (tests/test_benchmarks.py checks them against hand counts and torch's FlopCounterMode)."""

from __future__ import annotations

from dataclasses import dataclass

GRAD_MODES = ("none", "input", "weight", "both")


def linear_flops(tokens: int, d_in: int, d_out: int, grad: str) -> int:
    """Matmul FLOPs of a linear layer over `tokens` rows, forward plus what backward computes.

    grad: "none" (forward only: no_grad, or nothing upstream or in it trains), "input" (frozen weight,
    its input needs a gradient), "weight" (the weight trains, its input needs no gradient), "both".
    Forward is 2 x tokens x d_in x d_out; each backward product (input gradient, weight gradient) is as
    much again.
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    forward = 2 * tokens * d_in * d_out
    return forward * (1 + (grad in ("input", "both")) + (grad in ("weight", "both")))


def attention_flops(batch: int, q_len: int, kv_len: int, width: int, grad: bool) -> int:
    """FLOPs of scores = Q K^T and out = A V over all heads (width = heads x head dim), no causal halving.

    Forward 2 x 2 x batch x q_len x kv_len x width; backward (both operands of both products need
    gradients) twice that.
    """
    forward = 4 * batch * q_len * kv_len * width
    return forward * (3 if grad else 1)


@dataclass
class QwenShape:
    """A Qwen2 decoder's shape (defaults: Qwen2.5-7B-Instruct's config.json)."""

    hidden: int = 3584
    intermediate: int = 18944
    heads: int = 28
    kv_heads: int = 4
    layers: int = 28
    vocab: int = 152064


def qwen_lora_step_flops(
    shape: QwenShape, batch: int, seq: int, lora_r: int, embeddings_need_grad: bool = False
) -> int:
    """Model FLOPs of one LoRA training step (forward + backward) of a frozen Qwen2 with LoRA on every
    linear layer of the decoder layers (not lm_head, as peft's "all-linear"), input ids (frozen embeddings).

    Layer 0's q/k/v inputs come straight from the frozen embeddings: no input gradient there, unless
    `embeddings_need_grad` (transformers' enable_input_require_grads, which gradient checkpointing
    needs); everything after them depends on LoRA weights, so every later frozen linear passes a
    gradient to its input.
    """
    tokens = batch * seq
    h, kv = shape.hidden, shape.hidden * shape.kv_heads // shape.heads
    total = 0
    for layer in range(shape.layers):
        first = layer == 0 and not embeddings_need_grad
        linears = [  # (d_in, d_out, input needs grad)
            (h, h, not first),  # q
            (h, kv, not first),  # k
            (h, kv, not first),  # v
            (h, h, True),  # o
            (h, shape.intermediate, True),  # gate
            (h, shape.intermediate, True),  # up
            (shape.intermediate, h, True),  # down
        ]
        for d_in, d_out, input_grad in linears:
            total += linear_flops(tokens, d_in, d_out, "input" if input_grad else "none")
            total += linear_flops(tokens, d_in, lora_r, "both" if input_grad else "weight")  # lora_A
            total += linear_flops(tokens, lora_r, d_out, "both")  # lora_B
        total += attention_flops(batch, seq, seq, h, grad=True)
    total += linear_flops(tokens, h, shape.vocab, "input")  # lm_head, frozen
    return total


@dataclass
class TransformerShape:
    """An encoder's matmul shape: layers of attention (qkv, out) and a 2-layer MLP."""

    layers: int
    width: int
    mlp: int


VIT_L_14_336 = TransformerShape(layers=24, width=1024, mlp=4096)
MPNET_BASE = TransformerShape(layers=12, width=768, mlp=3072)


def frozen_encoder_flops(shape: TransformerShape, batch: int, seq: int) -> int:
    """Forward-only FLOPs of a frozen transformer encoder run under no_grad."""
    tokens = batch * seq
    w = shape.width
    per_layer = (
        linear_flops(tokens, w, 3 * w, "none")
        + linear_flops(tokens, w, w, "none")
        + linear_flops(tokens, w, shape.mlp, "none")
        + linear_flops(tokens, shape.mlp, w, "none")
        + attention_flops(batch, seq, seq, w, grad=False)
    )
    return shape.layers * per_layer


def alignment_step_flops(
    batch: int,
    image_size: int,
    patch: int,
    vision: TransformerShape,
    text: TransformerShape,
    text_len: int,
    max_dim: int,
    mrl_dims: list[int],
) -> int:
    """Model FLOPs of one stage-1 step with frozen towers (no_grad), a trainable 1-query attention pooling on
    the vision tokens, mean pooling on the text tokens, a trainable projection per tower, and
    0.25 x InfoNCE at max_dim + MRL at one dim drawn from mrl_dims (counted at their mean)."""
    patches = (image_size // patch) ** 2
    seq = patches + 1  # class token
    w = vision.width
    total = linear_flops(batch * patches, 3 * patch * patch, w, "none")  # patch embedding (a strided conv)
    total += frozen_encoder_flops(vision, batch, seq)
    # attention pooling: keys pass a trainable LayerNorm, so the k/v projections need input gradients too
    total += linear_flops(batch, w, w, "both")  # query projection (the query is a parameter)
    total += 2 * linear_flops(batch * seq, w, w, "both")  # key and value projections
    total += attention_flops(batch, 1, seq, w, grad=True)
    total += linear_flops(batch, w, w, "both")  # output projection
    total += linear_flops(batch, w, max_dim, "both")  # vision projection (pooling upstream trains)
    total += frozen_encoder_flops(text, batch, text_len)
    total += linear_flops(batch, text.width, max_dim, "weight")  # text projection (frozen tower upstream)
    # logits a @ b.T (both need input gradients; b @ a.T is its transpose, eg-losses computes one product):
    # at max_dim, and at the mean MRL dim
    mean_dim = sum(mrl_dims) / len(mrl_dims)
    total += linear_flops(batch, max_dim, batch, "both")
    total += int(linear_flops(batch, 1, batch, "both") * mean_dim)
    return total
