"""Glue for the Snakemake ``script:`` adapters: logging and clean error messages."""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import time
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
    stream: Any = sys.stderr
    if log_path is not None:
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            stream = open(log_path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:  # no log (disk full, permissions): the terminal still gets it all
            print(f"tmstarget: cannot write the log {log_path} ({exc.strerror}); messages go to "
                  "the terminal", file=sys.stderr, flush=True)
            log_path = None
    logging.basicConfig(stream=stream, level=logging.INFO, force=True)
    logging.captureWarnings(True)
    what = _step_name(smk)
    t0 = time.perf_counter()
    _write_log(stream, f"tmstarget: {what}: started", log_path)
    try:
        with contextlib.redirect_stderr(stream):
            result = func(**kwargs)
        _write_log(stream, f"tmstarget: {what}: done in {time.perf_counter() - t0:.1f} s; "
                   f"wrote {_outputs_line(smk)}", log_path)
    except TmsTargetError as exc:
        _fail(f"tmstarget ERROR: {_one_line(exc)}", stream, log_path)
    except KeyboardInterrupt:  # Ctrl-C: the tmstarget command says how to resume, once
        _write_log(stream, "tmstarget: interrupted", log_path)
        _close(stream, log_path)
        sys.exit(130)
    except OSError as exc:
        hint = _os_error_hint(exc)
        if hint is None:
            raise_unexpected(stream, log_path)
        _fail(f"tmstarget ERROR: {hint}", stream, log_path)
    except Exception:
        raise_unexpected(stream, log_path)
    finally:
        _close(stream, log_path)
    return result


def _step_name(smk: Any) -> str:
    """``rule target (prefix=sub-01/func/...)``: the step, for its log."""
    rule = getattr(smk, "rule", None) or "step"
    try:
        wc = ", ".join(f"{k}={v}" for k, v in dict(smk.wildcards.items()).items())
    except (AttributeError, TypeError):
        wc = ""
    return f"rule {rule}" + (f" ({wc})" if wc else "")


def _outputs_line(smk: Any) -> str:
    """The step's outputs in a few words (their count and names)."""
    try:
        outs = [str(o) for o in smk.output]
    except (AttributeError, TypeError):
        return "its outputs"
    if not outs:
        return "no output file"
    names = ", ".join(Path(o).name for o in outs[:4]) + (", ..." if len(outs) > 4 else "")
    return f"{len(outs)} output{'s' if len(outs) != 1 else ''} ({names})"


def _one_line(exc: BaseException) -> str:
    """An error message on one line (a file name with a newline cannot break it)."""
    return " ".join(str(exc).splitlines())


def _write_log(stream: Any, text: str, log_path: Path | None) -> bool:
    """Write to the job's log; False (and never an exception) when that fails (disk full)."""
    if log_path is None:
        return False
    try:
        print(text, file=stream, flush=True)
        return True
    except (OSError, ValueError):
        return False


def _close(stream: Any, log_path: Path | None) -> None:
    if stream is sys.stderr:
        return
    try:
        stream.close()
    except OSError:
        pass


def _fail(msg: str, stream: Any, log_path: Path | None) -> None:
    """Print ``msg`` to the log and the terminal, then fail the job (exit status 1)."""
    logged = _write_log(stream, msg, log_path)
    if not logged and log_path is not None:
        msg += f" (the log {log_path} could not be written: the disk may be full)"
    _print_terminal(msg)
    sys.exit(1)


def _print_terminal(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # pragma: no cover - no terminal left to tell
        pass


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
    if stream is sys.stderr:
        _print_terminal(tb)
    elif _write_log(stream, tb, log_path):
        _print_terminal(f"tmstarget: unexpected error, see {log_path}\n{tb}")
    else:
        _print_terminal(f"tmstarget: unexpected error (the log {log_path} could not be "
                        f"written)\n{tb}")
    sys.exit(1)
