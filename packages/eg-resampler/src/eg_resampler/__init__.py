"""eg-resampler: Perceiver Resampler: variable-length masked sequences to a fixed number of latents."""

__version__ = "0.1.0"

__all__: list[str] = []
