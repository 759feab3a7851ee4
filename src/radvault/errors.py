"""The one exception tree of RadVault.

Every error the package raises on purpose is a :class:`RadVaultError`, and each
also subclasses the builtin it resembles, so callers may catch either::

    RadVaultError(Exception)
    ├── ConfigurationError(ValueError)        settings missing or invalid
    ├── ImageInputError(ValueError)           a file that cannot become an image
    │   ├── NotAnImage                        not DICOM, PNG or JPEG (whatever the extension says)
    │   ├── CorruptImage                      truncated or malformed DICOM/PNG/JPEG
    │   ├── UnsupportedTransferSyntax         no decoder for the pixel encoding
    │   ├── MissingPixelData                  a DICOM object without pixels
    │   ├── ImageTooLarge                     file-size cap or decompression-bomb cap hit
    │   └── BurnedInAnnotationRefused         pixels may carry burned-in PHI
    ├── DeidentificationError(ValueError)     the profile could not be applied safely
    ├── ObjectNotFound(LookupError)           no such study/instance/object/user
    ├── VaultError                            the vault cannot do what was asked
    │   ├── VaultLocked(PermissionError)      wrong passphrase, missing or corrupt key file
    │   ├── KeyProviderError                  a key could not be wrapped, unwrapped or found
    │   ├── ObjectShredded                    the object's data key was destroyed
    │   ├── ConcurrentWriteConflict           another writer changed what a batch relied on
    │   └── UidConflict                       an image's study or series UID is taken
    ├── IntegrityError                        tampering detected (digest, signature, AEAD tag)
    │   ├── AuditChainError                   the audit trail was altered
    │   └── ModelIntegrityError               a model file or card does not match its signature
    ├── AccessDenied(PermissionError)         the caller may not do this
    │   ├── AuthenticationFailed              the caller could not be identified
    │   └── StudySiteConflict                 an image's study belongs to another site
    ├── AccountError(ValueError)              a user, site or grant change is invalid
    │   └── PasswordPolicyError               a password fails the password policy
    ├── JobError                              the job runner cannot do what was asked
    │   ├── TransientError                    a task failed for a reason that may pass: retry
    │   ├── JobRejected(ValueError)           a submission is malformed
    │   │   └── IdempotencyConflict           an idempotency key reused for another request
    │   └── JobTimeout(TimeoutError)          a job did not finish within the wait
    ├── InvalidRequest(ValueError)            a request's parameters are malformed
    │   ├── SignOffConflict                   a sign-off of a superseded or signed analysis
    │   └── UnknownModel                      a request names a model the registry lacks
    ├── PullError(ConnectionError)            a PACS could not be reached or failed a retrieve
    ├── ReportInputError(ValueError)          data handed to a report renderer is malformed
    ├── DatasetError(ValueError)              a manifest or dataset is unusable (missing file,
    │                                         sha-256 mismatch, train/test leakage)
    └── ModelError                            a model cannot be trained, loaded or run

Messages never carry PHI: they name objects by pseudonymous ids, and never quote a
header value or a library's message (which may quote one). File names are PHI too
(``Doe_John_MRN123.dcm``): an :class:`ImageInputError`'s message is its reason alone,
and the file, as the user named it, is kept apart in its ``path`` attribute, which only
the local command line prints (the operator typed it; :func:`operator_message`).
Faces (CLI, API, DICOM) map these classes to exit codes and statuses;
:func:`exit_status` is the command line's one table.
"""

from __future__ import annotations

from os import PathLike

__all__ = [
    "AccessDenied",
    "AccountError",
    "AuditChainError",
    "AuthenticationFailed",
    "BurnedInAnnotationRefused",
    "ConcurrentWriteConflict",
    "ConfigurationError",
    "CorruptImage",
    "DatasetError",
    "DeidentificationError",
    "IdempotencyConflict",
    "ImageInputError",
    "ImageTooLarge",
    "IntegrityError",
    "InvalidRequest",
    "JobError",
    "JobRejected",
    "JobTimeout",
    "KeyProviderError",
    "MissingPixelData",
    "ModelError",
    "ModelIntegrityError",
    "NotAnImage",
    "ObjectNotFound",
    "ObjectShredded",
    "PasswordPolicyError",
    "PullError",
    "RadVaultError",
    "ReportInputError",
    "SignOffConflict",
    "StudySiteConflict",
    "TransientError",
    "UidConflict",
    "UnknownModel",
    "UnsupportedTransferSyntax",
    "VaultError",
    "VaultLocked",
    "exit_status",
    "operator_message",
]


class RadVaultError(Exception):
    """Base class of every error RadVault raises on purpose."""


class ConfigurationError(RadVaultError, ValueError):
    """A setting is missing or invalid."""


class ImageInputError(RadVaultError, ValueError):
    """A file could not be turned into an image record.

    The message (``str(exc)``) is ``reason`` alone: it reaches API answers, web
    pages and the job store, where a file name (often a patient's) must not. The
    file is kept in ``path`` for the local command line, which prints
    ``path: reason`` to the operator who named it.

    Parameters
    ----------
    path : str or PathLike
        The file, as the user named it (never part of the message).
    reason : str
        What is wrong with it, in words a user can act on: a fixed phrase that
        quotes no header value and no decoder message.
    """

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(reason)


class NotAnImage(ImageInputError):
    """The file is not DICOM, PNG or JPEG, whatever its name says."""


class CorruptImage(ImageInputError):
    """The file is truncated or malformed."""


class UnsupportedTransferSyntax(ImageInputError):
    """No installed decoder handles the file's pixel encoding."""


class MissingPixelData(ImageInputError):
    """A DICOM object that carries no pixel data."""


class ImageTooLarge(ImageInputError):
    """The file exceeds the size cap or its pixel count exceeds the bomb cap."""


class BurnedInAnnotationRefused(ImageInputError):
    """The pixels may carry burned-in identifying text and the policy refuses them."""


class DeidentificationError(RadVaultError, ValueError):
    """The de-identification profile could not be applied safely."""


class VaultError(RadVaultError):
    """The vault cannot do what was asked."""


class ConcurrentWriteConflict(VaultError):
    """A concurrent writer changed what a batch of catalog writes relied on (PostgreSQL).

    The batch's transaction must be rolled back; one image at a time, the
    conflict becomes a precise answer (a duplicate, or a refusal).
    """


class UidConflict(VaultError):
    """An image's Study or Series Instance UID is already another patient's or study's,
    or its study was shredded: the image is refused (the sender's data, not a vault failure).
    """


class VaultLocked(VaultError, PermissionError):
    """The vault could not be unlocked: wrong passphrase, missing or corrupt key file."""


class KeyProviderError(VaultError):
    """A key could not be wrapped, unwrapped or found."""


class ObjectNotFound(RadVaultError, LookupError):
    """No study, instance, object or user has the given id."""


class ObjectShredded(VaultError):
    """The object's data key was destroyed; its blob can never be opened again."""


class IntegrityError(RadVaultError):
    """Stored data does not match its digest, signature or authentication tag."""


class AuditChainError(IntegrityError):
    """The audit trail was altered, truncated, extended or reordered."""


class ModelIntegrityError(IntegrityError):
    """A model's ONNX file or model card does not match its signature."""


class AccessDenied(RadVaultError, PermissionError):
    """The caller is not allowed to do this."""


class AuthenticationFailed(AccessDenied):
    """The caller could not be identified."""


class StudySiteConflict(AccessDenied):
    """An image's study already belongs to another site: refused, never merged into it.

    Each study belongs to one site, and a site's users and nodes see only its
    studies; an image of another site's study would cross that line.
    """


class AccountError(RadVaultError, ValueError):
    """A user, site or grant change is invalid (duplicate name, unknown site...)."""


class PasswordPolicyError(AccountError):
    """A password fails the password policy.

    Parameters
    ----------
    problems : sequence of str
        Every rule the password breaks, in words a user can act on.
    """

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("password refused: " + "; ".join(self.problems))


class JobError(RadVaultError):
    """The job runner cannot do what was asked."""


class TransientError(JobError):
    """A task failed for a reason that may pass (a busy service, a lost connection).

    Raise it from a task function to ask for another attempt after a back-off;
    any other :class:`RadVaultError` is a final answer.
    """


class JobRejected(JobError, ValueError):
    """A submission is malformed: payload not a JSON object or too large, bad key or actor."""


class IdempotencyConflict(JobRejected):
    """An idempotency key was reused with another task or payload."""


class JobTimeout(JobError, TimeoutError):
    """A job did not reach a final state within the time waited."""


class InvalidRequest(RadVaultError, ValueError):
    """A request's parameters are malformed or inconsistent (a bad id, window, decision...).

    Messages name the parameter, never its value when the value could be PHI.
    """


class SignOffConflict(InvalidRequest):
    """A sign-off that would sign a superseded analysis, or replace another radiologist's
    sign-off without saying it amends it."""


class UnknownModel(InvalidRequest):
    """A request names a model that the model registry does not hold.

    Refused before anything is queued; a model that disappears after that fails
    the job with a :class:`ModelError` instead.
    """


class PullError(RadVaultError, ConnectionError):
    """The PACS could not be reached, refused the association, or failed the retrieve."""


class ReportInputError(RadVaultError, ValueError):
    """The data handed to a report renderer is inconsistent or malformed (fields, not values)."""


class DatasetError(RadVaultError, ValueError):
    """A dataset or manifest is unusable (missing file, digest mismatch, leakage)."""


class ModelError(RadVaultError):
    """A model cannot be trained, loaded or run."""


def exit_status(exc: RadVaultError) -> int:
    """The command-line exit status for an error: 2 configuration, 3 vault locked,
    4 access denied, 5 integrity, 6 not found, 7 bad image input, 1 anything else.

    One table for every command (``radvault`` and ``python -m radvault.cli.models``)
    so that scripts can tell, say, a tampered model from a missing one.
    """
    for cls, status in ((ConfigurationError, 2), (VaultLocked, 3), (AccessDenied, 4),
                        (IntegrityError, 5), (ObjectNotFound, 6), (ImageInputError, 7)):
        if isinstance(exc, cls):
            return status
    return 1


def operator_message(exc: RadVaultError) -> str:
    """An error as a local command prints it: ``path: reason`` for an image error.

    Only for the operator's own terminal (the operator typed that path); messages
    that travel (API, pages, logs, job store, files written beside outputs) use
    ``str(exc)``, which names no file.
    """
    if isinstance(exc, ImageInputError):
        return f"{exc.path}: {exc}"
    return str(exc)
