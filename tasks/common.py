"""What every task module shares: the rule for which failures are worth a retry."""

from __future__ import annotations

import logging

from ulmfit_core.ingest import DataError

# The core logs progress to "ulmfit"; Prefect forwards it (PREFECT_LOGGING_EXTRA_LOGGERS).
logging.getLogger("ulmfit").setLevel(logging.INFO)

# Bad input and bad settings fail the same way every time; only other errors are retried.
PERMANENT = (DataError, ValueError, FileNotFoundError, FloatingPointError)


def retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return True
