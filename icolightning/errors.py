"""Errors that the command-line tools report as one line (see `icolightning.cli.entry`).

Each names what is wrong (the option or the file) and what to do; the exit status follows the
kind: 2 for a wrong option or combination of options, 1 for a file that cannot be used.
"""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A data folder, data file or checkpoint that cannot be used (exit status 1)."""


class DataFileError(DataError, ValueError):
    """A problem with one input file or store; the message always starts with the file (and variable)."""

    def __init__(self, path: str | Path, problem: str, variable: str | None = None) -> None:
        self.path, self.problem, self.variable = Path(path), problem, variable
        where = f"{path}" if variable is None else f"{path}: variable {variable!r}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[type[DataFileError], tuple[Path, str, str | None]]:
        return type(self), (self.path, self.problem, self.variable)


class UsageError(Exception):
    """A wrong option or combination of options (exit status 2)."""


class CheckpointError(DataError):
    """A checkpoint file that cannot be used (exit status 1); the message starts with the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that asks to build something outside the allowlist (`icolightning.lightning.trust`)."""
