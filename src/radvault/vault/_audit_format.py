"""The audit trail's record format: entries, checkpoints, reports and their hashes.

Private: import these names from :mod:`radvault.vault.audit`. Everything that
is hashed or signed is canonical JSON (sorted keys, compact, ASCII) tagged
with a versioned ``type`` so that it can never be confused with any other
message the vault key signs, and so that a later format can still read today's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from radvault.errors import AuditChainError
from radvault.vault.catalog import canonical_json

__all__ = [
    "ANCHORS_TYPE",
    "CHECKPOINT_TYPE",
    "ENTRY_TYPE",
    "GENESIS_HASH",
    "AuditEntry",
    "AuditReport",
    "Checkpoint",
    "checkpoint_message",
    "entry_hash",
    "entry_message",
    "load_anchors",
    "now_iso",
]

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of entry 1."""
ENTRY_TYPE: Final = "radvault.audit-entry/1"
CHECKPOINT_TYPE: Final = "radvault.audit-checkpoint/1"
ANCHORS_TYPE: Final = "radvault.audit-anchors/1"

HEX64 = re.compile(r"[0-9a-f]{64}")


def now_iso() -> str:
    """Return the current UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (sorts as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the chain."""

    seq: int
    ts: str
    actor: str
    action: str
    outcome: str
    object_ids: tuple[str, ...]
    details: Mapping[str, Any]
    prev_hash: str
    entry_hash: str

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as plain JSON data."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
            "object_ids": list(self.object_ids),
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }


@dataclass(frozen=True)
class Checkpoint:
    """A signature over the chain head ``head_hash`` at entry ``seq``."""

    seq: int
    head_hash: str
    signature: bytes
    signer_key_id: str
    ts: str

    def to_dict(self) -> dict[str, Any]:
        """Return the checkpoint as plain JSON data (signature in base64)."""
        return {
            "seq": self.seq,
            "head_hash": self.head_hash,
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "signer_key_id": self.signer_key_id,
            "ts": self.ts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Build a checkpoint from :meth:`to_dict` output.

        Raises
        ------
        AuditChainError
            When a field is missing or malformed.
        """
        try:
            seq = data["seq"]
            head = data["head_hash"]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise ValueError("seq")
            if not isinstance(head, str) or HEX64.fullmatch(head) is None:
                raise ValueError("head_hash")
            return cls(
                seq=seq,
                head_hash=head,
                signature=base64.b64decode(data["signature"], validate=True),
                signer_key_id=str(data["signer_key_id"]),
                ts=str(data["ts"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise AuditChainError("malformed audit checkpoint anchor") from None


@dataclass(frozen=True)
class AuditReport:
    """What :meth:`AuditLog.verify` found.

    ``problems`` are tampering evidence (``ok`` is ``False`` when there are
    any); ``notes`` are facts worth knowing that are not evidence, such as the
    number of entries after the last checkpoint, which no signature covers yet.
    """

    ok: bool
    entries_checked: int
    checkpoints_checked: int
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    head_seq: int
    head_hash: str
    last_checkpoint_seq: int

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON data (for ``--json``)."""
        return {
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "checkpoints_checked": self.checkpoints_checked,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "last_checkpoint_seq": self.last_checkpoint_seq,
        }

    def raise_for_problems(self) -> None:
        """Raise if the trail was tampered with.

        Raises
        ------
        AuditChainError
            Listing the first problems, when there are any.
        """
        if self.problems:
            shown = "; ".join(self.problems[:5])
            more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
            raise AuditChainError(f"audit trail tampered: {shown}{more}")


# --------------------------------------------------------------------------- hashing


def entry_message(
    *,
    seq: int,
    ts: str,
    actor: str,
    action: str,
    outcome: str,
    object_ids: Sequence[str],
    details: Mapping[str, Any],
) -> bytes:
    """Return the canonical bytes an entry's hash covers (its sequence number included)."""
    return canonical_json(
        {
            "type": ENTRY_TYPE,
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "action": action,
            "outcome": outcome,
            "object_ids": list(object_ids),
            "details": dict(details),
        }
    )


def entry_hash(prev_hash: str, message: bytes) -> str:
    """Return ``sha256(prev_hash || message)`` in hex.

    Raises
    ------
    ValueError
        When ``prev_hash`` is not 64 hex digits.
    """
    if HEX64.fullmatch(prev_hash) is None:
        raise ValueError("prev_hash must be 64 lower-case hex digits")
    return hashlib.sha256(bytes.fromhex(prev_hash) + message).hexdigest()


def checkpoint_message(seq: int, head_hash: str, ts: str) -> bytes:
    """Return the canonical bytes a checkpoint's signature covers."""
    return canonical_json({"type": CHECKPOINT_TYPE, "seq": seq, "head_hash": head_hash, "ts": ts})


def load_anchors(document: str | bytes) -> list[Checkpoint]:
    """Parse checkpoints exported by :meth:`AuditLog.export_checkpoints`.

    Raises
    ------
    AuditChainError
        When the document is not an anchors export.
    """
    try:
        data = json.loads(document)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AuditChainError("audit anchors are not valid JSON") from None
    if not isinstance(data, dict) or data.get("type") != ANCHORS_TYPE:
        raise AuditChainError(f"audit anchors must be a {ANCHORS_TYPE!r} document")
    items = data.get("checkpoints")
    if not isinstance(items, list):
        raise AuditChainError("audit anchors hold no checkpoint list")
    return [Checkpoint.from_dict(item) for item in items]


