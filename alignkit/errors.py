"""Exceptions a user is meant to read. The CLI prints them without a traceback."""


class AlignkitError(Exception):
    """Base class: the message alone tells the user what went wrong and how to fix it."""


class DataError(AlignkitError):
    """Invalid input data. `problems` holds one `RecordProblem` per bad record."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class TemplateError(AlignkitError):
    """A chat template renders in a way that would misalign loss masks."""


class ModelNotFoundError(AlignkitError):
    """A model name or path that cannot be resolved locally."""
