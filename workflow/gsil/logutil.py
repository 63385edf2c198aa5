"""One logging set-up for every stage: timestamps to stderr, which the workflow redirects to the rule's log."""

from __future__ import annotations

import logging
import os


def setup_logging(stage: str) -> logging.Logger:
    level = os.environ.get("GSIL_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"gsil.{stage}")


class GsilError(Exception):
    """A user-facing failure: bad input, bad config, missing file. The CLI prints it without a traceback."""
