"""The one exception type eg-losses raises for mistakes a user can make (config values, input shapes)."""


class LossError(ValueError):
    """A bad loss configuration or bad loss inputs; the message names the key or argument and the fix."""
