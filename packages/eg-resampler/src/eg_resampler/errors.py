"""The one exception type eg-resampler raises for mistakes a user can make (config values, input shapes)."""


class ResamplerError(ValueError):
    """A bad resampler configuration or input; the message names the key or argument and the fix."""
