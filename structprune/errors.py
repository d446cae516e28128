"""The one exception type for bad user input: the CLI prints its message as a single line."""


class StructpruneError(Exception):
    """An error caused by input the user can fix (a file, a flag, a model). Message: one line."""
