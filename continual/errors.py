"""The one exception type that the CLI turns into a single ``error: ...`` line and a non-zero exit."""


class ContinualError(Exception):
    """A problem with the user's config or data, reported as one line naming the file/field at fault."""
