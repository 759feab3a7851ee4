"""The exception tree: one root, builtin bases, messages naming the file."""

import inspect

import pytest

from radvault import errors


def all_error_classes() -> list[type]:
    return [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, Exception) and obj.__module__ == errors.__name__]


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_is_a_radvault_error_and_exported(cls: type) -> None:
    assert issubclass(cls, errors.RadVaultError)
    assert cls.__name__ in errors.__all__


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ConfigurationError, ValueError),
        (errors.NotAnImage, ValueError),
        (errors.VaultLocked, PermissionError),
        (errors.AccessDenied, PermissionError),
        (errors.ObjectNotFound, LookupError),
        (errors.AuditChainError, errors.IntegrityError),
    ],
)
def test_errors_subclass_the_builtin_they_resemble(cls: type, builtin: type) -> None:
    assert issubclass(cls, builtin)


def test_image_errors_keep_the_file_apart_from_their_message() -> None:
    # The message reaches API answers, web pages and the job store: the file name
    # (often a patient's) stays in ``path``, which only the local command line prints.
    exc = errors.CorruptImage("scans/Doe_John_MRN123.dcm", "pixel data ends early")
    assert str(exc) == "pixel data ends early"
    assert "Doe" not in repr(exc)
    assert exc.path == "scans/Doe_John_MRN123.dcm"
    assert exc.reason == "pixel data ends early"


def test_the_tree_is_drawn_in_the_module_docstring() -> None:
    for name in errors.__all__:
        assert name in (errors.__doc__ or ""), name
