"""Logging for pipeline jobs: everything a job prints goes to its ``logs/<rule>/...`` file.

Bad input (:class:`brainage.core.io.InputError`) ends the job with its one-line message on the
terminal (stderr) as well as in the log, without a traceback, so that a user running
``snakemake --keep-going`` over thousands of subjects sees which subject and file is wrong.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

from brainage.core.io import InputError


@contextlib.contextmanager
def redirect_to_log(path: str | Path) -> Iterator[logging.Logger]:
    """Send stdout, stderr and the ``brainage`` logger to ``path`` for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.__stderr__
    logger = logging.getLogger("brainage")
    with open(path, "w", buffering=1) as handle:
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield logger
        except InputError as err:
            handle.write(f"ERROR: {err}\n")
            print(f"brainage: {err}", file=terminal)
            raise SystemExit(1) from None
        finally:
            logger.removeHandler(handler)
