"""Glue for the Snakemake ``script:`` adapters: logging and clean error messages."""

from __future__ import annotations

import contextlib
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
