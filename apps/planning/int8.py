"""bitsandbytes' 8-bit and 4-bit linear layers, as they hold memory, for a model built on fake tensors.

bitsandbytes keeps its weights in tensor subclasses (`Int8Params`, `Params4bit`) that cannot wrap a fake
tensor, so a quantized Qwen is built unquantized (bf16) and then given, for each linear layer that
transformers' bitsandbytes integration quantizes (every nn.Linear but the output head), a stand-in that
stores and computes what bitsandbytes does:
- 8-bit (`Linear8bitLt`): an int8 weight (out, in) and fp32 row scales `SCB` (out,); forward dequantizes
  the weight to the input's dtype and runs a linear, saving the input for backward; backward dequantizes
  again. That is bitsandbytes' `MatMul8bitFp`, its training path on CPU (benchmarks/bench_plan.py checks
  the plan against the real library on CPU). On CUDA it runs `MatMul8bitLt`, which keeps the same input
  and differs only in the forward's short-lived buffers (an int8 copy of the input instead of the
  dequantized weight). Both keep the input as a plain ctx attribute, which gradient checkpointing cannot
  free: with 8-bit layers, checkpointing saves much less than it does on bf16 weights.
- 4-bit nf4 with double quantization (`Linear4bit`): 4-bit weights packed two per byte, one 8-bit absmax
  per block of 64 and one fp32 absmax per 256 blocks; forward and backward dequantize to the compute
  dtype and save nothing (`MatMul4Bit`).
Then what `peft.prepare_model_for_kbit_training` does to the rest: every fp16/bf16 parameter that is not
a quantized weight (embeddings, norms, output head, biases) becomes fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_4BIT, BLOCK_ABSMAX = 64, 256  # bitsandbytes' nf4 block size and its double-quantization block


class _Int8MatMul(torch.autograd.Function):
    """bitsandbytes' MatMul8bitFp with frozen int8 weights: saves the input, dequantizes in both passes."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, scb: torch.Tensor, bias: Any
    ) -> torch.Tensor:
        dequantized = weight.to(x.dtype).mul_(scb.unsqueeze(1).mul(1.0 / 127.0))  # (out, in)
        # bitsandbytes keeps the input as a ctx attribute, not through save_for_backward, so gradient
        # checkpointing (which drops only saved tensors) cannot free it: every quantized linear's input
        # stays alive until backward, checkpointed or not. Kept the same way here.
        ctx.x, ctx.weight, ctx.scb = x, weight, scb
        return F.linear(x, dequantized, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, scb = ctx.x, ctx.weight, ctx.scb
        dequantized = weight.to(x.dtype).mul_(scb.unsqueeze(1).mul(1.0 / 127.0))
        grad_x = torch.matmul(grad.to(x.dtype), dequantized).view(x.shape)
        return grad_x, None, None, None


class _Nf4MatMul(torch.autograd.Function):
    """bitsandbytes' MatMul4Bit: dequantizes the packed weight in forward and backward, saves nothing."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: torch.Tensor, layer: Any, bias: Any) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantized(x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return torch.matmul(grad, ctx.layer.dequantized(grad.dtype)), None, None, None


class Int8Linear(nn.Module):
    """A frozen Linear8bitLt's storage and training step: int8 weight (out, in), fp32 SCB (out,), bias."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        out_features, in_features = linear.weight.shape
        device = linear.weight.device
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=torch.int8, device=device), False
        )
        self.register_buffer("SCB", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = linear.bias
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) in x's dtype."""
        return _Int8MatMul.apply(x, self.weight, self.SCB, self.bias)


class Nf4Linear(nn.Module):
    """A frozen Linear4bit's storage (nf4, double quantization) and training step."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype) -> None:
        super().__init__()
        out_features, in_features = linear.weight.shape
        numel, device = out_features * in_features, linear.weight.device
        blocks = -(-numel // BLOCK_4BIT)
        self.weight = nn.Parameter(torch.empty(-(-numel // 2), 1, dtype=torch.uint8, device=device), False)
        self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8, device=device))
        self.register_buffer(
            "absmax2", torch.empty(-(-blocks // BLOCK_ABSMAX), dtype=torch.float32, device=device)
        )
        self.bias = linear.bias
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The (out, in) weight in `dtype` (bitsandbytes dequantizes to the compute dtype, then casts)."""
        weight = torch.empty(
            self.out_features, self.in_features, dtype=self.compute_dtype, device=self.weight.device
        )
        return weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        return _Nf4MatMul.apply(x, self.weight, self, self.bias)


@dataclass
class QuantizedSummary:
    """What was replaced: how many linear layers and their parameters, and the line said with the plan."""

    kind: str
    num_layers: int
    num_params: int
    note: str


def _is_output_head(model: nn.Module, linear: nn.Module) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head is linear


def quantize_like_bitsandbytes(decoder: nn.Module, qwen: Any) -> QuantizedSummary:
    """Give the decoder's LM bitsandbytes' quantized layers (see the module docstring), in place.

    `decoder`: a QwenDecoder built unquantized; `qwen`: its configured QwenDecoderConfig (quantization
    8bit or 4bit, dtype the compute dtype).
    """
    from eg_decoders.qwen import DTYPES

    lm = decoder.model
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    from peft.tuners.tuners_utils import BaseTunerLayer

    compute = DTYPES[qwen.dtype]
    adapters = {  # LoRA's own linear layers (lora_A, lora_B): trained, never quantized
        id(sub)
        for layer in base.modules()
        if isinstance(layer, BaseTunerLayer)
        for name, child in layer.named_children()
        if name != "base_layer"
        for sub in child.modules()
    }
    count = params = 0
    for parent in list(base.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or id(child) in adapters or _is_output_head(base, child):
                continue
            replacement = Int8Linear(child) if qwen.quantization == "8bit" else Nf4Linear(child, compute)
            setattr(parent, name, replacement)
            count += 1
            params += child.weight.numel()
    quantized = {id(m.weight) for m in base.modules() if isinstance(m, (Int8Linear, Nf4Linear))}
    for module in base.modules():  # peft.prepare_model_for_kbit_training: the rest in fp32
        for name, param in list(module._parameters.items()):
            if (
                param is not None
                and id(param) not in quantized
                and param.dtype in (torch.float16, torch.bfloat16)
            ):
                module._parameters[name] = nn.Parameter(param.detach().to(torch.float32), param.requires_grad)
    kind = (
        "int8 + fp32 row scales" if qwen.quantization == "8bit" else "nf4 (4-bit) + double-quantized absmax"
    )
    note = (
        f"model.decoder.qwen.quantization={qwen.quantization}: {count} linear layers ({params / 1e9:.2f} B "
        f"weights) counted as bitsandbytes stores them ({kind}); bitsandbytes' own layers cannot hold fake "
        "tensors, so a stand-in with its storage and its saved tensors runs in their place"
    )
    return QuantizedSummary(kind=qwen.quantization, num_layers=count, num_params=params, note=note)
