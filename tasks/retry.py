"""Retry policy of the tasks that read or write files: backoff, but never on bad input."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from microchange.errors import InputError


def not_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless the task failed on bad input (a missing file stays missing)."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return not isinstance(data, InputError)
    try:
        state.result(raise_on_failure=True)
    except InputError:
        return False
    except BaseException:  # noqa: BLE001 - any other failure may be transient
        return True
    return True


IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),  # 2, 4, 8 s
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": not_bad_input,
}
"""Keyword arguments of ``@task`` for I/O tasks: 3 retries after ~2, 4 and 8 s."""
