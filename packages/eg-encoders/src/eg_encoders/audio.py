"""Audio encoder: the Whisper encoder (openai-whisper) with real padding masks.

Whisper's own encoder attends over its whole 30 s window, padding included. Here the same weights run a
masked forward: padded mel frames are zeroed before each convolution (so the last valid frames see the
zeros a clip of exactly that length would see), and every block's self-attention gets a key-padding mask.
Tokens of the valid part therefore do not depend on padding at all: a clip padded to any length, with
any content in the padded region, gives the same tokens and pooled vector. With a full mask the result
equals Whisper's own `AudioEncoder.forward`.

Input longer than the context (`audio_spec.n_samples` / `n_frames`) is cut to it, with a warning that
counts the cut clips (`num_truncated`); it is not chunked. With `trim_padding`, frames that are padding for
every clip of the batch are dropped before the encoder (N shrinks to the longest clip; saves compute).
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from eg_encoders.common import (
    EncoderError,
    EncoderOutput,
    apply_trainable_blocks,
    check_int,
    check_trainable_blocks,
    is_missing,
)
from eg_encoders.pooling import PoolingConfig

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # mel frame = 10 ms; one encoder token = 2 frames = 20 ms
MIN_SAMPLES = 400  # one STFT window (whisper's N_FFT)
# (n_mels, n_audio_ctx) of the released Whisper models (the `dims` of their checkpoints): 30 s windows,
# 128 mel bins from large-v3 on ("large" and "turbo" are large-v3 and large-v3-turbo)
WHISPER_INPUT_DIMS = {
    **dict.fromkeys(
        ["tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium", "large-v1"],
        (80, 1500),
    ),
    "large-v2": (80, 1500),
    **dict.fromkeys(["large-v3", "large", "large-v3-turbo", "turbo"], (128, 1500)),
}


@dataclass
class AudioSpec:
    """What the audio encoder expects: 16 kHz audio, `n_mels` log-mel bins, at most `n_samples` samples
    (= `n_frames` mel frames = 2 * n_audio_ctx)."""

    sample_rate: int
    n_mels: int
    n_samples: int
    n_frames: int


@dataclass
class WhisperEncoderDims:
    """Encoder dimensions for a random-init Whisper encoder (whisper's ModelDimensions, audio half).

    Checked when constructed: n_mels 80 or 128, every size >= 1, n_audio_head dividing n_audio_state.
    """

    n_mels: int = 80
    """Log-mel bins, 80 or 128."""
    n_audio_ctx: int = 1500
    """Audio tokens (20 ms each after the stride-2 conv); 1500 = 30 s."""
    n_audio_state: int = 512
    """Encoder width."""
    n_audio_head: int = 8
    """Attention heads; n_audio_state must divide by it."""
    n_audio_layer: int = 6
    """Encoder blocks."""

    def __post_init__(self) -> None:
        """Raise EncoderError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        if not is_missing(self.n_mels) and self.n_mels not in (80, 128):
            raise EncoderError(f"n_mels must be 80 or 128 (Whisper's log-mel sizes), got {self.n_mels}")
        for key in ("n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer"):
            check_int(getattr(self, key), key, 1)
        state, heads = self.n_audio_state, self.n_audio_head
        if not is_missing(state) and not is_missing(heads) and state % heads:
            raise EncoderError(f"n_audio_head={heads} must divide n_audio_state={state}")


@dataclass
class AudioEncoderConfig:
    """Audio encoder settings; checked when constructed (EncoderError naming the key).

    Whether model_name exists, and k of `trainable_blocks` against the encoder's depth, are checked when the
    encoder is built.
    """

    model_name: str = "base"
    """A Whisper name (tiny, base, small, medium, large-v3, ...: whisper.available_models()) or a local .pt
    checkpoint as whisper.load_model reads it. Must be "" when `dims` is set."""
    download_root: str = ""
    """Where Whisper names are looked up / downloaded ("" = ~/.cache/whisper)."""
    dims: WhisperEncoderDims | None = None
    """Explicit dimensions for a random-init encoder (null = load model_name)."""
    trainable_blocks: int = 0
    """0 = frozen, -1 = train all, k = train the last k blocks (+ final norm)."""
    grad_checkpointing: bool = False
    """Recompute block activations in backward to save memory."""
    trim_padding: bool = True
    """Drop frames that are padding in every clip of the batch before encoding."""
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    """How tokens become the pooled vector (`type: none`: no pooling, `pooled` is None)."""

    def __post_init__(self) -> None:
        """Raise EncoderError naming the first bad key (values still omegaconf.MISSING are skipped)."""
        check_trainable_blocks(self.trainable_blocks)
        if is_missing(self.model_name) or is_missing(self.dims):
            return
        if self.dims is not None and self.model_name:
            raise EncoderError(
                f"model_name={self.model_name!r} and dims are both set; set model_name='' for a "
                "random-init encoder, or dims=null to load a model"
            )
        if self.dims is None and not self.model_name:
            raise EncoderError(
                "model_name is empty and dims is null; name a Whisper model or a .pt checkpoint, "
                "or set dims for a random-init encoder"
            )

    def build(self) -> AudioEncoder:
        """An AudioEncoder with these settings (loads the backbone)."""
        return AudioEncoder(self)

    def n_mels(self) -> int | None:
        """Log-mel bins `build()` will expect (its `audio_spec.n_mels`), known without loading weights; None
        when not (see `n_samples`)."""
        dims = self._input_dims()
        return None if dims is None else dims[0]

    def n_samples(self) -> int | None:
        """Most 16 kHz samples one clip may have (`audio_spec.n_samples`; longer clips are cut), known
        without loading weights: from `dims`, from the released Whisper models' dimensions for a Whisper
        name, or from the `dims` entry of a local .pt checkpoint (memory-mapped: its tensors are not read).
        None when it cannot be known so (a missing file, a checkpoint torch cannot map) or while a value is
        still omegaconf.MISSING."""
        dims = self._input_dims()
        return None if dims is None else 2 * dims[1] * HOP_LENGTH

    def _input_dims(self) -> tuple[int, int] | None:
        """(n_mels, n_audio_ctx) of the encoder this config builds, or None when unknown without loading."""
        if is_missing(self.model_name) or is_missing(self.dims):
            return None
        if self.dims is not None:
            mels, ctx = self.dims.n_mels, self.dims.n_audio_ctx
            return None if is_missing(mels) or is_missing(ctx) else (mels, ctx)
        if self.model_name in WHISPER_INPUT_DIMS:
            return WHISPER_INPUT_DIMS[self.model_name]
        if not os.path.isfile(self.model_name):
            return None
        try:  # mmap: only the pickled structure is read, tensors stay on disk (a large checkpoint is GBs)
            checkpoint = torch.load(self.model_name, map_location="cpu", mmap=True, weights_only=True)
            dims = checkpoint["dims"]
            return int(dims["n_mels"]), int(dims["n_audio_ctx"])
        except (OSError, RuntimeError, pickle.UnpicklingError, KeyError, TypeError, ValueError):
            return None  # not mappable or not a Whisper checkpoint: build() loads it and says what is wrong


class AudioEncoder(nn.Module):
    """log-mels (B, n_mels, T) + frame mask (B, T), or 16 kHz waveforms -> EncoderOutput over 20 ms tokens."""

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _load_whisper_encoder(config)
        n_ctx, width = self.backbone.positional_embedding.shape
        n_mels = self.backbone.conv1.in_channels
        self.audio_spec = AudioSpec(SAMPLE_RATE, n_mels, 2 * n_ctx * HOP_LENGTH, 2 * n_ctx)
        self.output_dim: int = width
        blocks = list(self.backbone.blocks)
        apply_trainable_blocks(self.backbone, blocks, [self.backbone.ln_post], config.trainable_blocks)
        self.frozen = config.trainable_blocks == 0
        self.pooling = config.pooling.build(width)  # None for pooling type "none"
        self.num_truncated = 0
        self.train(self.training)

    def train(self, mode: bool = True) -> AudioEncoder:
        """Set train mode; a frozen backbone stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(
        self, audio: torch.Tensor | Sequence[torch.Tensor], audio_mask: torch.Tensor | None = None
    ) -> EncoderOutput:
        """Encode a batch.

        audio: log-mels (B, n_mels, T) with `audio_mask` (B, T) bool (True = valid frame; None = all valid),
            or waveforms: a (B, S) tensor with `audio_mask` (B, S) over samples, or a list of 1-D tensors.
        Returns tokens (B, N, D) with N = ceil(T / 2), mask (B, N) True on tokens of valid frames,
        pooled (B, D) (None with pooling type "none").
        """
        is_waveform = not torch.is_tensor(audio) or audio.ndim == 2
        if is_waveform:
            mel, frame_mask = self.log_mel(audio, audio_mask)
        else:
            mel, frame_mask = self._check_mel(audio, audio_mask)
        if self.config.trim_padding:
            longest = int(frame_mask.sum(dim=1).max())
            keep = min(mel.shape[-1], longest + longest % 2)
            mel, frame_mask = mel[..., :keep], frame_mask[:, :keep]
        if mel.shape[-1] % 2:
            mel = F.pad(mel, (0, 1))
            frame_mask = F.pad(frame_mask, (0, 1), value=False)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens, token_mask = self._encode(mel, frame_mask)
        pooled = None if self.pooling is None else self.pooling(tokens, token_mask)  # (B, D)
        return EncoderOutput(tokens=tokens, mask=token_mask, pooled=pooled)

    def log_mel(
        self, waveforms: torch.Tensor | Sequence[torch.Tensor], sample_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz waveforms -> (log-mel (B, n_mels, n_frames), frame mask (B, n_frames)) via whisper.

        Each clip's log-mel is computed on its valid samples only (Whisper normalizes by the clip's max).
        """
        import whisper

        if torch.is_tensor(waveforms):
            if sample_mask is None:
                clips = list(waveforms)
            else:
                clips = [w[m.bool()] for w, m in zip(waveforms, sample_mask)]
        else:
            clips = list(waveforms)
        spec = self.audio_spec
        mel = torch.zeros(len(clips), spec.n_mels, spec.n_frames)
        frame_mask = torch.zeros(len(clips), spec.n_frames, dtype=torch.bool)
        for i, clip in enumerate(clips):
            clip = torch.as_tensor(clip, dtype=torch.float32).flatten().cpu()
            if clip.numel() < MIN_SAMPLES:
                raise EncoderError(
                    f"audio sample {i} has {clip.numel()} samples; need at least {MIN_SAMPLES} "
                    f"(25 ms at 16 kHz): drop empty clips or mark them absent"
                )
            if clip.numel() > spec.n_samples:
                clip = clip[: spec.n_samples]
                self._count_truncation(i)
            clip_mel = whisper.log_mel_spectrogram(clip, n_mels=spec.n_mels)  # (n_mels, frames)
            n = clip_mel.shape[-1]
            mel[i, :, :n] = clip_mel
            frame_mask[i, :n] = True
        device = self.backbone.conv1.weight.device
        return mel.to(device), frame_mask.to(device)

    def _check_mel(self, mel: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.audio_spec
        if mel.ndim != 3 or mel.shape[1] != spec.n_mels:
            raise EncoderError(
                f"audio log-mel has shape {tuple(mel.shape)}; this encoder expects (B, {spec.n_mels}, T) "
                f"(whisper log-mel with {spec.n_mels} bins)"
            )
        if mask is None:
            mask = torch.ones(mel.shape[0], mel.shape[-1], dtype=torch.bool, device=mel.device)
        if mask.shape != (mel.shape[0], mel.shape[-1]):
            raise EncoderError(
                f"audio_mask has shape {tuple(mask.shape)}; expected (B, T) = {(mel.shape[0], mel.shape[-1])}"
            )
        mask = mask.bool()
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise EncoderError(f"audio samples {empty} have no valid frames (empty audio); mark them absent")
        if mel.shape[-1] > spec.n_frames:
            for i in mask[:, spec.n_frames :].any(dim=1).nonzero().flatten().tolist():
                self._count_truncation(i)
            mel, mask = mel[..., : spec.n_frames], mask[:, : spec.n_frames]
        return mel, mask

    def _count_truncation(self, index: int) -> None:
        self.num_truncated += 1
        seconds = self.audio_spec.n_samples / SAMPLE_RATE
        warnings.warn(
            f"audio sample {index} is longer than the encoder's {seconds:g} s context and was cut to it "
            f"({self.num_truncated} clips cut so far)",
            stacklevel=3,
        )

    def _encode(self, mel: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, T) even T, frame_mask (B, T) -> tokens (B, T/2, D), token mask (B, T/2)."""
        enc = self.backbone
        mel = mel.to(enc.conv1.weight.dtype)
        keep = frame_mask.unsqueeze(1).to(mel.dtype)  # (B, 1, T)
        x = F.gelu(enc.conv1(mel * keep)) * keep  # (B, D, T)
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)  # (B, T/2, D)
        token_mask = frame_mask[:, ::2]  # token t covers frames 2t-1..2t+1; valid when frame 2t is
        x = x + enc.positional_embedding[: x.shape[1]].to(x.dtype)
        attn_mask = token_mask[:, None, None, :]  # (B, 1, 1, N): keys only
        for block in enc.blocks:
            if self.config.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(_masked_block, block, x, attn_mask, use_reentrant=False)
            else:
                x = _masked_block(block, x, attn_mask)
        x = enc.ln_post(x) * token_mask.unsqueeze(-1).to(x.dtype)  # padding tokens set to 0
        return x, token_mask


def _masked_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """One whisper ResidualAttentionBlock (its own weights) with a key-padding mask. x (B, N, D)."""
    attn = block.attn
    h = block.attn_ln(x)
    batch, n, width = h.shape
    heads = attn.n_head

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, n, heads, width // heads).transpose(1, 2)  # (B, H, N, D/H)

    # whisper scales q and k by d**-0.25 each: the same as SDPA's default 1/sqrt(d)
    out = F.scaled_dot_product_attention(
        split(attn.query(h)), split(attn.key(h)), split(attn.value(h)), attn_mask=attn_mask
    )
    x = x + attn.out(out.transpose(1, 2).reshape(batch, n, width))
    return x + block.mlp(block.mlp_ln(x))


def _load_whisper_encoder(config: AudioEncoderConfig) -> nn.Module:
    import whisper
    from whisper.model import AudioEncoder as WhisperAudioEncoder

    if config.dims is not None:
        d = config.dims
        return WhisperAudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
    name = config.model_name
    if name not in whisper.available_models() and not os.path.isfile(name):
        raise EncoderError(
            f"model_name={name!r} is neither a Whisper model name {whisper.available_models()} nor a "
            f"local .pt checkpoint file; or set model_name='' with dims for random init"
        )
    model = whisper.load_model(name, device="cpu", download_root=config.download_root or None)
    return model.encoder
