"""Keep DICOM values out of the logs that pynetdicom and pydicom write for us.

Private: the SCP and ``radvault pull`` call :func:`redact_library_logs` before they
talk DICOM. pynetdicom logs non-conformant values as it decodes and encodes DIMSE
messages ("Non-conformant 'Affected SOP Instance UID' value '...'") and dumps
whole identifiers at INFO/DEBUG; pydicom logs and warns with the value when a
message it builds holds an invalid one ("Invalid value for VR UI: '...'"), in the
association's own thread, where no caller can capture it. A UID can carry a
medical record number, so:

- records of those libraries below WARNING are dropped, and the others keep their
  text with every quoted part replaced by ``'...'`` (an exception attached to a
  record is reduced to its type);
- pydicom's "Invalid value for VR" warnings are ignored (the reader captures its
  own; RadVault sets values only without validation or with valid ones).
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["REDACTED", "RedactValues", "redact_library_logs"]

#: What a quoted part of a library's log message becomes.
REDACTED = "'...'"

_LIBRARIES = ("pynetdicom", "pydicom")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class RedactValues(logging.Filter):
    """Drop a library's records below WARNING; redact the quoted parts of the others."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place (message, args, exception); ``False`` drops it."""
        if record.levelno < logging.WARNING:
            return False
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its level, not its text
            message = "(unformattable message)"
        if record.exc_info and record.exc_info[0] is not None:
            message += f" ({record.exc_info[0].__name__})"
        record.msg = _QUOTED.sub(REDACTED, message)
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


_FILTER = RedactValues()


def redact_library_logs() -> None:
    """Put :class:`RedactValues` on every pynetdicom and pydicom logger (idempotent).

    A filter on a logger sees only the records made by that logger, so it goes on
    each one the libraries created (they create theirs when imported).
    """
    names = [name for name in list(logging.root.manager.loggerDict)
             if name.split(".")[0] in _LIBRARIES]
    for name in {*_LIBRARIES, *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning,
                            module="pydicom")
