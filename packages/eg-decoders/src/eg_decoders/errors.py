"""The one exception type eg-decoders raises for errors a user can cause (config, paths, batches)."""


class DecoderError(ValueError):
    """A bad decoder config value, model path, saved directory or batch; the message says what to fix."""
