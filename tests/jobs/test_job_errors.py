"""The jobs errors join the package tree; which failures are retried; what is recorded."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from radvault.errors import AccessDenied, IntegrityError, RadVaultError, VaultLocked
from radvault.jobs import (
    IdempotencyConflict,
    JobError,
    JobRejected,
    JobTimeout,
    TransientError,
    is_transient,
)
from radvault.jobs._errors import describe_error


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (JobError, (RadVaultError,)),
        (TransientError, (JobError,)),
        (JobRejected, (JobError, ValueError)),
        (IdempotencyConflict, (JobRejected, ValueError)),
        (JobTimeout, (JobError, TimeoutError)),
    ],
)
def test_errors_subclass_the_tree_and_the_matching_builtin(cls, bases) -> None:
    assert all(issubclass(cls, base) for base in bases)


@pytest.mark.parametrize(
    "exc",
    [
        TransientError("busy"),
        ConnectionResetError(),
        TimeoutError(),
        OSError(28, "No space left on device"),
        sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient_failures(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad"),
        KeyError("x"),
        TypeError(),
        FileNotFoundError(2, "missing"),
        PermissionError(),
        AccessDenied("no"),  # a PermissionError, but a decision
        VaultLocked("wrong passphrase"),
        IntegrityError("tampered"),
        JobError("bad result"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_failures(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_tasks_may_declare_more_transient_classes() -> None:
    class Busy(Exception):
        pass

    assert not is_transient(Busy())
    assert is_transient(Busy(), (Busy,))


def test_recorded_error_keeps_only_messages_known_to_be_phi_free() -> None:
    assert describe_error(VaultLocked("wrong passphrase")) == "VaultLocked: wrong passphrase"
    assert describe_error(ValueError("Jane Doe, 1970-01-01")) == "ValueError"
    assert describe_error(TransientError()) == "TransientError"
    long = describe_error(JobError("x" * 1000))
    assert len(long) <= 300 + len("JobError: ") and long.endswith("...")
