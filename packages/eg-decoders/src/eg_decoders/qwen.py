"""QwenDecoderConfig and QwenDecoder: a Hugging Face causal LM (Qwen2.5 by default) with LoRA, 8/4-bit loading
and a prefix projector.

The config is core (torch only): a YAML naming a Qwen decoder is checked without the `qwen` extra. The
decoder's libraries (transformers, peft; bitsandbytes and accelerate when quantized) are imported when a
decoder is built, never when this module is imported (they take seconds and are an extra).

The projector is a plain float32 module created after the model is loaded, so bitsandbytes never
quantizes it, and it is always trainable. save() writes the LoRA adapter (peft format) next to every
other trainable weight (projector); load_decoder() builds the decoder from the saved config and loads
both back (`load_weights`), which reproduces identical outputs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from eg_decoders import quiet
from eg_decoders.base import CONFIG_FILE, Decoder, DecoderOutput
from eg_decoders.chat import ChatTokens, plain_chat_tokens, template_chat_tokens
from eg_decoders.checks import check_choice, check_int, check_range, check_type
from eg_decoders.errors import DecoderError, is_missing
from eg_decoders.labels import answer_loss
from eg_decoders.prefix import splice_prefix, take_text, text_only
from eg_decoders.projector import PROJECTOR_KINDS

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

QUANTIZATIONS = ("none", "8bit", "4bit")
DTYPE_NAMES = ("bfloat16", "float16", "float32")
# what the Qwen decoder imports (the `qwen` extra); the last two only for 8/4-bit loading
QWEN_MODULES = ("transformers", "peft", "bitsandbytes", "accelerate")
QWEN_EXTRA_INSTALL = "pip install 'eg-decoders[qwen]'"

quiet.drop_bitsandbytes_kernels_warning()  # before anything imports bitsandbytes: see quiet.py


@dataclass
class QwenDecoderConfig:
    """A Hugging Face causal LM (hub id or local dir) with LoRA and optional 8/4-bit quantization."""

    type: str = "qwen"
    """The decoder kind, always qwen (names it in YAML and in a saved decoder_config.json)."""
    model_name: str = "Qwen/Qwen2.5-7B-Instruct"
    """A Hugging Face causal LM: a hub id (from the local cache when offline) or a local directory with its
    tokenizer."""
    quantization: str = "none"
    """none, 8bit or 4bit (nf4), with bitsandbytes; quantized weights are frozen."""
    dtype: str = "bfloat16"
    """Weights dtype of the unquantized parts (and the 4-bit compute dtype): bfloat16, float16 or float32."""
    use_lora: bool = True
    """Train LoRA adapters (peft) on the LM; false trains only the prefix projector on a frozen LM."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names that get LoRA adapters; [all-linear] = every linear layer but the output head."""
    gradient_checkpointing: bool = False
    """Recompute the LM's activations in backward to save memory."""
    use_chat_template: bool = True
    """Wrap the question in the tokenizer's chat template (with the generation prompt) when it has one."""
    system_prompt: str | None = None
    """A system message put before the question in the chat template (null = none)."""
    device: str | None = None
    """Where a quantized model is loaded (null = cuda:<current device>, or cpu without CUDA)."""
    max_length: int = 512
    """Most tokens of prompt + answer; a longer pair loses the start of its prompt first."""
    prefix_dim: int = 0
    """Width of the prefix embeddings, projected to hidden_size by a `projector`; 0 = they already have
    hidden_size (no projector)."""
    projector: str = "mlp"
    """Kind of prefix projector: linear, or mlp (LLaVA-1.5 style: Linear, GELU, Linear)."""

    def __post_init__(self) -> None:
        """Raise DecoderError naming the first bad key."""
        check_type(self, "qwen")
        if self.model_name == "":
            raise DecoderError("model_name is empty; name a causal LM (hub id or local directory)")
        check_choice(self, "quantization", QUANTIZATIONS)
        check_choice(self, "dtype", DTYPE_NAMES)
        check_int(self, "lora_r", 1)
        if not is_missing(self.lora_alpha) and not self.lora_alpha > 0:
            raise DecoderError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        check_range(self, "lora_dropout", 0.0, 1.0, high_open=True)
        targets = self.lora_target_modules
        if self.use_lora is True and not is_missing(targets) and not list(targets):
            raise DecoderError("lora_target_modules is empty; use ['all-linear'] or module names")
        check_int(self, "max_length", 2)
        check_int(self, "prefix_dim", 0)
        check_choice(self, "projector", PROJECTOR_KINDS)

    def build(self) -> QwenDecoder:
        """A QwenDecoder with these settings: the base model loaded from model_name, a fresh LoRA adapter.

        Needs the `qwen` extra (transformers, peft; bitsandbytes and accelerate when quantized): without
        it, a one-line DecoderError says which library is missing and how to install the extra.
        """
        missing = missing_qwen_modules(self.quantization)
        if missing:
            raise DecoderError(
                f"type 'qwen' needs {', '.join(missing)} (not installed): {QWEN_EXTRA_INSTALL}"
            )
        return QwenDecoder(self)


def missing_qwen_modules(quantization: str = "none") -> list[str]:
    """The libraries of the `qwen` extra that a decoder with this quantization needs and cannot import."""
    needed = QWEN_MODULES if quantization != "none" else QWEN_MODULES[:2]
    return [name for name in needed if importlib.util.find_spec(name) is None]


ADAPTER_DIR = "adapter"
TRAINABLE_FILE = "trainable.pt"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _quantization_config(config: QwenDecoderConfig, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    from transformers import BitsAndBytesConfig

    if config.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if config.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return None


class QwenDecoder(Decoder):
    """Prefix-conditioned causal LM with a fresh LoRA adapter (`load_weights` loads a saved one)."""

    def __init__(self, config: QwenDecoderConfig) -> None:
        # deferred to the build: transformers and peft are the `qwen` extra and take seconds to import
        from peft import get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__()
        self.config = config
        dtype = DTYPES[config.dtype]
        quantization = _quantization_config(config, dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model_name)
            kwargs: dict = {"dtype": dtype}
            if quantization is not None:
                device = config.device or (
                    f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
                )
                kwargs.update(quantization_config=quantization, device_map={"": device})
            with quiet.quiet_progress_bars():
                model = AutoModelForCausalLM.from_pretrained(config.model_name, **kwargs)
        except OSError as err:
            raise DecoderError(
                f"model_name '{config.model_name}' could not be loaded (not a local model directory, "
                f"not in the Hugging Face cache, or offline): {str(err).splitlines()[0]}"
            ) from err
        if quantization is not None:
            # checkpointing is switched on below: peft's own call is transformers 5's deprecated alias
            # (a FutureWarning in the user's terminal); with use_reentrant=False that call is all it adds
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            model.requires_grad_(False)
        if config.gradient_checkpointing:
            # transformers 5 renamed gradient checkpointing to activation checkpointing
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if quantization is None:
                model.enable_input_require_grads()
        if config.use_lora:
            try:
                with quiet.no_checkpointing_alias_warning():
                    model = get_peft_model(model, self._lora_config())
            except ValueError as err:  # peft: a target module name matches nothing in the model
                raise DecoderError(
                    f"lora_target_modules {config.lora_target_modules}: {str(err).splitlines()[0]}"
                ) from err
        self.model = model
        self._hidden = model.config.get_text_config().hidden_size
        self.projector = self._build_projector(config.prefix_dim, config.projector)
        if self.projector is not None:
            self.projector.to(self._device())

    def _lora_config(self) -> LoraConfig:
        from peft import LoraConfig

        targets = self.config.lora_target_modules
        return LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets),
            task_type="CAUSAL_LM",
        )

    def _device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def hidden_size(self) -> int:
        return self._hidden

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else pad

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def prompt_ids(self, question: str) -> list[int]:
        """The question in the tokenizer's chat template (with the generation prompt) when it has one."""
        if self.config.use_chat_template and self.tokenizer.chat_template:
            messages = [{"role": "user", "content": question}]
            if self.config.system_prompt:
                messages.insert(0, {"role": "system", "content": self.config.system_prompt})
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = question + "\n"
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def decode(self, ids: list[int]) -> str:
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_tokens(
        self, messages: Sequence[dict[str, Any]], media_turn: int = 0, generation: bool = False
    ) -> ChatTokens:
        """The conversation through the tokenizer's chat template (with `system_prompt`) when it has one and
        `use_chat_template`, else the plain role format (chat.py)."""
        if self.config.use_chat_template and self.tokenizer.chat_template:
            return template_chat_tokens(
                self.tokenizer, messages, media_turn, generation, self.config.system_prompt
            )

        def encode(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

        return plain_chat_tokens(encode, [], self.eos_id, messages, media_turn, generation)

    def _inputs(
        self,
        prefix_embeds: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix_mask: torch.Tensor | None,
        prefix_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """inputs_embeds (B, L, D) and attention_mask (B, L) of the text with the projected prefix spliced
        in at prefix_at (None: first), and text_index (B, T) (see prefix.py)."""
        device = self._device()
        embeds = self.model.get_input_embeddings()(input_ids.to(device))  # (B, T, D)
        mask = attention_mask.to(device)
        prefix = self.project_prefix(prefix_embeds.to(device) if prefix_embeds is not None else None)
        if prefix is None:
            embeds, valid, text_index = text_only(embeds, mask)
        else:
            if prefix_mask is None:
                prefix_mask = torch.ones(prefix.shape[:2], dtype=torch.bool, device=device)
            embeds, valid, text_index = splice_prefix(prefix, prefix_mask.to(device), embeds, mask, prefix_at)
        return embeds, valid.long(), text_index

    def forward(
        self,
        prefix_embeds: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        prefix_at: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """prefix_embeds (B, P, prefix_dim) or None, input_ids/attention_mask/labels (B, T) -> DecoderOutput.

        prefix_mask (B, P): False removes a prefix token; prefix_at (B,): text tokens before the prefix
        (None: the prefix comes first)."""
        embeds, mask, text_index = self._inputs(
            prefix_embeds, input_ids, attention_mask, prefix_mask, prefix_at
        )
        position_ids = (mask.cumsum(-1) - 1).clamp(
            min=0
        )  # (B, L): padding and masked prefix take no position
        out = self.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        )
        logits = take_text(out.logits, text_index)  # (B, T, V)
        if labels is None:
            return DecoderOutput(loss=None, logits=logits)
        loss = answer_loss(logits, labels.to(logits.device))
        return DecoderOutput(loss=loss, logits=logits, step_losses=[loss], parts={"answer_ce": loss.detach()})

    @torch.no_grad()
    def generate(
        self,
        prefix_embeds: torch.Tensor | None,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        prefix_mask: torch.Tensor | None = None,
        prefix_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """New tokens (B, N <= max_new_tokens) after left-padded prompts, via HF generate with a KV cache.

        prefix_mask and prefix_at as in forward (HF takes positions from the attention mask, as forward
        does). `generator` is accepted for interface parity; HF sampling draws from the global RNG (seed it).
        """
        was_training = self.training
        self.eval()
        mask = torch.ones_like(prompt_ids) if prompt_mask is None else prompt_mask
        embeds, full_mask, _ = self._inputs(prefix_embeds, prompt_ids, mask, prefix_mask, prefix_at)
        sampling = {"temperature": temperature, "top_k": top_k or None, "top_p": top_p} if do_sample else {}
        out = self.model.generate(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            use_cache=True,
            **sampling,
        )  # (B, N): with inputs_embeds only, HF returns just the new tokens
        self.train(was_training)
        return self._finish_generation(out)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor (LoRA weights and projector): what a checkpoint of this decoder needs."""
        return {n: p.detach().cpu() for n, p in self.named_parameters() if p.requires_grad}

    def save(self, path: str) -> None:
        """Write decoder_config.json, the peft adapter (adapter/) and trainable.pt (projector and the rest)."""
        from peft import PeftModel

        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(dataclasses.asdict(self.config), f, indent=2)
        if isinstance(self.model, PeftModel):
            self.model.save_pretrained(os.path.join(path, ADAPTER_DIR))
        # everything trainable that the adapter does not hold (the projector, any unfrozen extra module)
        others = {n: t for n, t in self.trainable_state_dict().items() if not n.startswith("model.")}
        torch.save(others, os.path.join(path, TRAINABLE_FILE))

    def load_weights(self, path: str) -> None:
        """Load what save() wrote into directory path: the LoRA adapter and trainable.pt (projector, rest)."""
        from peft import PeftModel, set_peft_model_state_dict
        from peft.utils import load_peft_weights

        adapter = os.path.join(path, ADAPTER_DIR)
        if isinstance(self.model, PeftModel):
            if not os.path.isdir(adapter):
                raise DecoderError(f"{adapter} not found; this decoder has use_lora set, so save() wrote one")
            result = set_peft_model_state_dict(self.model, load_peft_weights(adapter, device="cpu"))
            if result.unexpected_keys:
                raise DecoderError(
                    f"{adapter} holds weights {result.unexpected_keys[:3]} this decoder's LoRA does not "
                    "have; check lora_target_modules and lora_r"
                )
        file = os.path.join(path, TRAINABLE_FILE)
        if not os.path.isfile(file):
            raise DecoderError(f"{file} not found; point at a directory written by QwenDecoder.save()")
        state = torch.load(file, map_location="cpu", weights_only=True)
        params = dict(self.named_parameters())
        missing = [n for n in state if n not in params]
        if missing:
            raise DecoderError(
                f"{file} holds weights {missing[:3]} this decoder does not have; check its config"
            )
        for name, tensor in state.items():
            params[name].data.copy_(tensor)
