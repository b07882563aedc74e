"""The one exception type eg-data raises for problems a user can cause (paths, config values, data)."""


class DataError(ValueError):
    """A user-fixable data problem: a bad path, config value or dataset; the message is one line."""
