"""Errors of the jobs layer and the rule that decides which failures are retried.

They live in the package's one tree (:mod:`radvault.errors`) and are re-exported here::

    RadVaultError
    └── JobError                      the job runner cannot do what was asked; a task result
        │                             that is not a JSON object
        ├── TransientError            a task failed for a reason that may pass: retry it
        ├── JobRejected(ValueError)   a submission is malformed (payload, key, actor, task)
        │   └── IdempotencyConflict   an idempotency key reused for another request
        └── JobTimeout(TimeoutError)  a job did not finish within the wait
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from radvault.errors import (  # re-exported: they live in the one tree
    IdempotencyConflict,
    JobError,
    JobRejected,
    JobTimeout,
    RadVaultError,
    TransientError,
)

__all__ = [
    "IdempotencyConflict",
    "JobError",
    "JobRejected",
    "JobTimeout",
    "TransientError",
    "describe_error",
    "is_transient",
]

_MESSAGE_MAX = 300


# Operating-system errors that are a fact about the request, not the moment.
_PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def is_transient(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """Tell whether a task failure is worth another attempt.

    Transient: :class:`TransientError`, ``TimeoutError``, ``ConnectionError``,
    other ``OSError`` (disk or network trouble) except the ones that describe
    the request (missing file, permission refused...), SQLAlchemy's
    ``OperationalError`` (lost connection, busy database), and the classes in
    ``extra``. Every other :class:`~radvault.errors.RadVaultError` and every
    programming error (``TypeError``, ``ValueError``...) is permanent.

    Parameters
    ----------
    exc : BaseException
        What the task raised.
    extra : tuple of exception classes
        Further classes the task declared transient.

    Returns
    -------
    bool
        ``True`` to retry (within the attempt budget), ``False`` to fail now.
    """
    if isinstance(exc, TransientError) or (extra and isinstance(exc, extra)):
        return True
    if isinstance(exc, RadVaultError):
        return False
    if isinstance(exc, sa_exc.OperationalError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def describe_error(exc: BaseException) -> str:
    """The PHI-free text stored for a failed attempt: type name, and a message if safe.

    Only :class:`~radvault.errors.RadVaultError` messages are kept, because
    the package guarantees they carry no PHI; a library's message might echo
    a value (a name, a date), so for any other exception only its type name is
    recorded.
    """
    name = type(exc).__name__
    if isinstance(exc, RadVaultError):
        text = " ".join(str(exc).split())
        if text:
            if len(text) > _MESSAGE_MAX:
                text = text[: _MESSAGE_MAX - 3] + "..."
            return f"{name}: {text}"
    return name
