"""The exception raised for errors a user can cause (config values, paths, data, non-finite runs)."""


class TrainError(ValueError):
    """A user-fixable training error: bad config key, unreadable checkpoint, bad batch, diverged run."""
