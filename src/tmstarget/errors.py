"""Errors raised by tmstarget.

Every error a user can meet should say *what* is wrong, *in which file*, and *what to do*.
:class:`InputError` carries those three parts so that messages stay uniform.
"""

from __future__ import annotations

from os import PathLike


class TmsTargetError(Exception):
    """Base class of every error tmstarget raises on purpose."""


class InputError(TmsTargetError):
    """An input file (or configuration value) is unusable.

    Parameters
    ----------
    path : str or PathLike or None
        The file the problem is in (``None`` when it is a configuration value).
    problem : str
        What is wrong, in words a non-programmer understands.
    hint : str, optional
        What the user can do about it.
    """

    def __init__(self, path: str | PathLike[str] | None, problem: str, hint: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.hint = hint
        where = f"{self.path}: " if self.path else ""
        msg = f"{where}{problem}"
        if hint:
            msg += f" What to do: {hint}"
        super().__init__(msg)


class ConfigError(InputError):
    """The configuration is invalid (unknown key, wrong type, impossible value)."""
