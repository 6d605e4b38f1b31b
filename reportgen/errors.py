"""One exception tree for reportgen; each class carries the exit code the CLI returns for it.

Only ``cli.py`` turns these into exit codes. Messages are written for the user: what was expected,
what was found, and where (file:line and dotted key, image path, layer name).
"""

from __future__ import annotations

__all__ = [
    "ReportgenError",
    "UsageError",
    "ConfigError",
    "DataError",
    "ModelError",
    "MethodError",
    "CacheError",
    "RenderError",
]


class ReportgenError(Exception):
    """Base of every error reportgen raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(ReportgenError):
    """The command line was wrong (missing file, refused overwrite)."""

    exit_code = 2


class ConfigError(ReportgenError):
    """A config failed validation. ``problems`` holds one line per problem, all reported at once."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DataError(ReportgenError):
    """The image folder could not be read at all (a single bad image is skipped, not raised)."""


class ModelError(ReportgenError):
    """The model could not be built, its weights loaded, or a layer found."""


class MethodError(ReportgenError):
    """A visualization method could not run on this model or layer."""


class CacheError(ReportgenError):
    """The cache folder could not be read or written."""


class RenderError(ReportgenError):
    """Drawing figures, writing the HTML or printing the PDF failed."""
