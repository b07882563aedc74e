"""eg-resampler: Perceiver Resampler: variable-length masked sequences to a fixed number of latents."""

from eg_resampler.errors import ResamplerError
from eg_resampler.perceiver import PerceiverResampler, PerceiverResamplerConfig

__version__ = "0.2.0"

__all__ = ["PerceiverResampler", "PerceiverResamplerConfig", "ResamplerError"]
