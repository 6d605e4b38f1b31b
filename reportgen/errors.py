"""One exception tree for reportgen; each class carries the exit code the CLI returns for it.

Only ``cli.py`` turns these into exit codes. Messages are written for the user: what was expected,
what was found, and where (file:line and dotted key, image path, layer name).
"""

from __future__ import annotations

from collections.abc import Iterable

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
    """A config failed validation. ``problems`` holds one line per problem, all reported at once.

    The report is bounded, so a config with a million mistakes prints a screenful, not megabytes: the first
    ``MAX_PROBLEMS`` problems are kept, each cut to ``MAX_LINE`` characters, then one line counting the rest
    (those not kept here plus ``more`` that the caller already left out), prefixed with ``source`` when given.
    """

    exit_code = 2
    MAX_PROBLEMS = 20
    MAX_LINE = 1000

    def __init__(self, problems: Iterable[str] | str, *, source: object = None, more: int = 0):
        kept: list[str] = []
        for problem in [problems] if isinstance(problems, str) else problems:
            if len(kept) < self.MAX_PROBLEMS:
                kept.append(problem if len(problem) <= self.MAX_LINE else problem[: self.MAX_LINE - 1] + "…")
            else:
                more += 1
        if more:
            prefix = f"{source}: " if source is not None else ""
            kept.append(f"{prefix}... and {more} more problem{'s' if more != 1 else ''}")
        self.problems = kept
        self.more = more
        super().__init__("\n".join(kept))


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
