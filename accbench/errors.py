"""Errors a user can act on. The CLI prints them without a traceback and maps them to exit codes."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


class AccbenchError(Exception):
    """A problem with the user's input or environment: message says what, where, and how to fix it."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is marked interrupted and everything computed stays on disk."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file, located by its dotted key path and YAML line."""

    path: str
    message: str
    line: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.source and self.line else (self.source or "")
        loc = f"{where}: " if where else ""
        return f"{loc}{self.path}: {self.message}" if self.path else f"{loc}{self.message}"


class ConfigError(AccbenchError):
    """All problems found in a config, reported together before any model loads."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}")


class ModelLoadError(AccbenchError):
    """The model could not be loaded or placed."""


class DataError(AccbenchError):
    """A dataset path, format or column is wrong."""
