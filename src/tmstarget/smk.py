"""Glue for the Snakemake ``script:`` adapters: logging and clean error messages."""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import TmsTargetError


def run_step(smk: Any, func: Callable[..., Any], **kwargs: Any) -> Any:
    """Run one workflow step with its log file; turn known errors into one clear line.

    Parameters
    ----------
    smk : snakemake.script.Snakemake
        The ``snakemake`` object of the script.
    func : callable
        The package function implementing the step.
    **kwargs
        Passed to ``func``.

    Notes
    -----
    Warnings and library chatter go to the rule's log file. A :class:`TmsTargetError` is
    written as ``tmstarget ERROR: <message>`` to the log and to the terminal and the job
    fails; the outputs are not created (every writer is atomic). Unexpected errors keep
    their traceback in the log.
    """
    log_path = Path(str(smk.log[0])) if len(smk.log) else None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(log_path, "w", encoding="utf-8") if log_path else sys.stderr  # noqa: SIM115
    logging.basicConfig(stream=stream, level=logging.INFO, force=True)
    logging.captureWarnings(True)
    try:
        with contextlib.redirect_stderr(stream):
            result = func(**kwargs)
    except TmsTargetError as exc:
        msg = f"tmstarget ERROR: {exc}"
        print(msg, file=stream, flush=True)
        if stream is not sys.stderr:
            print(msg, file=sys.stderr, flush=True)
        sys.exit(1)
    except OSError as exc:
        hint = _os_error_hint(exc)
        if hint is None:
            raise_unexpected(stream, log_path)
        msg = f"tmstarget ERROR: {hint}"
        print(msg, file=stream, flush=True)
        if stream is not sys.stderr:
            print(msg, file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception:
        tb = traceback.format_exc()
        print(tb, file=stream, flush=True)
        if stream is not sys.stderr:
            print(f"tmstarget: unexpected error, see {log_path}\n{tb}", file=sys.stderr,
                  flush=True)
        sys.exit(1)
    finally:
        if stream is not sys.stderr:
            stream.close()
    return result


def _os_error_hint(exc: OSError) -> str | None:
    """A clear message for the file-system errors users meet (disk full, read-only)."""
    where = exc.filename or "the output folder"
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"{where}: the disk (or your quota) is full; nothing partial was kept. What to "
                "do: free space or choose another output folder, then run the same command "
                "again (finished steps are kept).")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{where}: permission denied or read-only file system. What to do: choose an "
                "output folder you can write to.")
    return None


def raise_unexpected(stream: Any, log_path: Path | None) -> None:
    """Report an unexpected error with its traceback and fail the job."""
    tb = traceback.format_exc()
    print(tb, file=stream, flush=True)
    if stream is not sys.stderr:
        print(f"tmstarget: unexpected error, see {log_path}\n{tb}", file=sys.stderr, flush=True)
    sys.exit(1)
