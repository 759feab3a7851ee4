"""Verification of the audit chain (private: use :meth:`radvault.vault.audit.AuditLog.verify`).

Detection is exact: an entry whose hash does not recompute, a gap in the
sequence numbers, a link to the wrong predecessor, a checkpoint whose
signature fails or whose signed head is absent. The rest of this module turns
those facts into precise, human-readable explanations: where a moved entry's
hash would be valid (it was reordered or renumbered), which entries no signed
checkpoint reaches (forged or inserted), how far a truncated tail reached.

Time and memory are linear in the number of entries (a few hundred bytes
each, plus the fields of failing entries): one pass over the table is enough.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radvault.errors import AuditChainError, IntegrityError
from radvault.vault._audit_format import (
    GENESIS_HASH,
    AuditReport,
    Checkpoint,
    checkpoint_message,
    entry_hash,
    entry_message,
)
from radvault.vault.catalog import Verifier

__all__ = ["FileCopy", "read_file_copy", "verify_chain"]

_WINDOW = 16  # how far from its position a moved entry's true place is searched for


@dataclass
class FileCopy:
    """What the JSON-lines file copy says."""

    checkpoints: list[Checkpoint] = field(default_factory=list)
    entries: dict[int, str] = field(default_factory=dict)  # seq -> entry_hash
    bad_lines: list[int] = field(default_factory=list)


def read_file_copy(path: Path) -> FileCopy:
    """Parse the audit file copy; unreadable lines are recorded, not raised."""
    out = FileCopy()
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                rec = json.loads(line)
                if rec["type"] == "entry":
                    out.entries[int(rec["seq"])] = str(rec["entry_hash"])
                elif rec["type"] == "checkpoint":
                    out.checkpoints.append(Checkpoint.from_dict(rec))
                else:
                    raise ValueError("unknown record type")
            except (ValueError, KeyError, TypeError, AuditChainError):
                out.bad_lines.append(number)
    return out


@dataclass
class _Seen:
    seq: int
    prev: str
    stored: str
    ok: bool
    fields: dict[str, Any] | None  # kept only for failing entries, to diagnose them
    sealed: int | None = None  # the position at which the entry's hash is valid


@dataclass
class _State:
    rows: list[_Seen] = field(default_factory=list)
    by_hash: dict[str, int] = field(default_factory=dict)  # entry_hash -> index in rows
    problems: list[tuple[int, str]] = field(default_factory=list)  # (sort key, text)
    reported: set[int] = field(default_factory=set)  # seqs already named in a problem
    marked: set[int] = field(default_factory=set)  # seqs reached from a signed head

    def add(self, key: int, text: str, *seqs: int) -> None:
        self.problems.append((key, text))
        self.reported.update(seqs)

    @property
    def max_seq(self) -> int:
        return self.rows[-1].seq if self.rows else 0


def _ranges(values: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in sorted(values):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def _span(a: int, b: int) -> str:
    return f"entry {a}" if a == b else f"entries {a}-{b}"


def _hash_at(prev: str, fields: dict[str, Any], seq: int) -> str | None:
    try:
        return entry_hash(prev, entry_message(seq=seq, **fields))
    except (TypeError, ValueError):
        return None


def _load(rows: Iterable[Any], state: _State) -> None:
    for row in rows:
        try:
            fields: dict[str, Any] | None = {
                "ts": row.ts, "actor": row.actor, "action": row.action, "outcome": row.outcome,
                "object_ids": json.loads(row.object_ids), "details": json.loads(row.details),
            }
        except (json.JSONDecodeError, TypeError):
            fields = None
        seq = int(row.seq)
        ok = fields is not None and _hash_at(row.prev_hash, fields, seq) == row.entry_hash
        state.by_hash.setdefault(row.entry_hash, len(state.rows))
        state.rows.append(_Seen(seq, row.prev_hash, row.entry_hash, ok,
                                None if ok else fields, seq if ok else None))


def _diagnose_moves(state: _State) -> None:
    """Find the position at which each failing entry's hash is valid (it was moved from there)."""
    for row in state.rows:
        if row.ok or row.fields is None:
            continue
        candidates: list[int] = [1] if row.prev == GENESIS_HASH else []
        pred = state.by_hash.get(row.prev)
        if pred is not None:
            sealed = state.rows[pred].sealed
            if sealed is not None:
                candidates.append(sealed + 1)
        candidates += [row.seq + d for d in range(-_WINDOW, _WINDOW + 1) if d]
        for cand in candidates:
            if cand >= 1 and _hash_at(row.prev, row.fields, cand) == row.stored:
                row.sealed = cand
                break


def _report_sequence(state: _State) -> None:
    """Gaps, moved entries, altered entries and broken links."""
    rows = state.rows
    expected = 1
    for row in rows:
        if row.seq > expected:
            state.add(expected, f"{_span(expected, row.seq - 1)} missing")
        expected = max(expected, row.seq + 1)

    moved = {r.seq: r.sealed for r in rows if not r.ok and r.sealed is not None}
    swapped: set[int] = set()
    for seq, sealed in moved.items():
        if sealed is not None and seq < sealed and moved.get(sealed) == seq:
            state.add(seq, f"entries {seq} and {sealed} swapped (each one's hash is valid "
                      "only at the other's position)", seq, sealed)
            swapped.update((seq, sealed))
    groups: list[list[int]] = []
    for seq in sorted(s for s in moved if s not in swapped):
        shift = seq - moved[seq]  # type: ignore[operator]
        if groups and groups[-1][-1] == seq - 1 and groups[-1][0] - moved[groups[-1][0]] == shift:  # type: ignore[operator]
            groups[-1].append(seq)
        else:
            groups.append([seq])
    for group in groups:
        a, b = group[0], group[-1]
        if a == b:
            state.add(a, f"entry {a} out of order (its hash is valid only as entry "
                      f"{moved[a]})", a)
        else:
            shift = a - moved[a]  # type: ignore[operator]
            state.add(a, f"entries {a}-{b} out of order (renumbered by {shift:+d}; their "
                      f"hashes are valid as entries {moved[a]}-{moved[b]})", *group)

    for row in rows:
        if not row.ok and row.sealed is None:
            state.add(row.seq, f"entry {row.seq}: hash mismatch (altered)", row.seq)

    by_seq = {r.seq: r for r in rows}
    for row in rows:
        if not row.ok:
            continue
        if row.seq == 1:
            if row.prev != GENESIS_HASH:
                state.add(1, "entry 1: chain broken (does not start from the genesis hash)", 1)
            continue
        before = by_seq.get(row.seq - 1)
        if before is not None and before.seq not in moved and row.prev != before.stored:
            state.add(row.seq, f"entry {row.seq}: chain broken (does not follow entry "
                      f"{row.seq - 1}; an entry before it was inserted, replaced or removed)",
                      row.seq)


def _check_checkpoints(
    state: _State,
    stored: list[Checkpoint],
    external: dict[str, list[Checkpoint]],
    verifier: Verifier,
) -> tuple[list[Checkpoint], int]:
    """Compare catalog checkpoints with external ones, check signatures and signed heads."""
    stored_by_seq = {c.seq: c for c in stored}
    candidates: dict[int, list[tuple[str, Checkpoint]]] = {}
    for cp in stored:
        candidates.setdefault(cp.seq, []).append(("catalog", cp))
    for source, items in external.items():
        for cp in items:
            have = stored_by_seq.get(cp.seq)
            if have is None:
                state.add(cp.seq, f"checkpoint at {cp.seq}: missing from the catalog "
                          f"(kept by the {source})")
            elif (have.head_hash, have.signature, have.ts) != (cp.head_hash, cp.signature, cp.ts):
                state.add(cp.seq, f"checkpoint at {cp.seq}: differs from the {source}")
            candidates.setdefault(cp.seq, []).append((source, cp))

    present = {r.seq for r in state.rows}
    trusted: list[Checkpoint] = []
    n_checked = 0
    for seq in sorted(candidates):
        good: Checkpoint | None = None
        seen: set[tuple[str, bytes, str]] = set()
        for source, cp in candidates[seq]:
            key = (cp.head_hash, cp.signature, cp.ts)
            if key in seen:
                continue
            seen.add(key)
            n_checked += 1
            try:
                verifier.verify(checkpoint_message(cp.seq, cp.head_hash, cp.ts), cp.signature)
            except IntegrityError:
                where = "" if source == "catalog" else f" (in the {source})"
                state.add(seq, f"checkpoint at {seq}: bad signature{where}")
                continue
            good = good or cp
        if good is None:
            continue
        trusted.append(good)
        if good.head_hash not in state.by_hash and seq in present:
            # (a missing head entry is reported as missing instead)
            state.add(seq, f"checkpoint at {seq}: signed chain head not found "
                      f"(entries up to {seq} were rewritten)")
    return trusted, n_checked


def _walk_signed(state: _State, trusted: list[Checkpoint]) -> int:
    """Mark entries reached backwards from signed heads; return the highest head walked."""
    rows = state.rows
    marked: set[int] = set()
    walked_to = 0
    for cp in sorted(trusted, key=lambda c: -c.seq):
        i: int | None = state.by_hash.get(cp.head_hash)
        if i is None:
            continue
        walked_to = max(walked_to, cp.seq)
        while i is not None and i not in marked:
            marked.add(i)
            if rows[i].prev == GENESIS_HASH:
                break
            j = state.by_hash.get(rows[i].prev)
            if j is None:  # a gap or break, reported already: carry on below it
                j = i - 1
                while j >= 0 and j in marked:
                    j -= 1
                j = j if j >= 0 else None
            i = j
    state.marked = {rows[i].seq for i in marked}
    return walked_to


def _report_off_chain(state: _State, walked_to: int) -> None:
    off = [r.seq for r in state.rows if r.seq <= walked_to and r.seq not in state.marked
           and r.seq not in state.reported]
    for a, b in _ranges(off):
        state.add(a, f"{_span(a, b)}: not on the signed chain (forged or inserted)",
                  *range(a, b + 1))


def _compare_file(state: _State, copy: FileCopy, trusted: list[Checkpoint]) -> None:
    """Differences from the file copy, and a truncated tail that a checkpoint or the file proves."""
    for number in copy.bad_lines:
        state.add(0, f"audit file copy line {number}: unreadable (file altered)")
    by_seq = {r.seq: r for r in state.rows}
    differ = [seq for seq, digest in copy.entries.items()
              if seq in by_seq and by_seq[seq].stored != digest and seq not in state.reported]
    for a, b in _ranges(differ):
        state.add(a, f"{_span(a, b)}: differ{'s' if a == b else ''} from the audit file copy",
                  *range(a, b + 1))


def _report_truncation(state: _State, trusted: list[Checkpoint], copy: FileCopy | None) -> None:
    top = state.max_seq
    proofs: dict[str, int] = {}
    beyond = [c.seq for c in trusted if c.seq > top and c.head_hash not in state.by_hash]
    if beyond:
        proofs[f"checkpoint at {max(beyond)}"] = max(beyond)
    if copy is not None:
        past = [seq for seq in copy.entries if seq > top]
        if past:
            proofs["the audit file copy"] = max(past)
    if proofs:
        end = max(proofs.values())
        why = " and ".join(sorted(proofs)) + (" prove" if len(proofs) > 1 else " proves")
        state.add(top + 1, f"{_span(top + 1, end)} missing (log truncated; {why} they existed)")


def verify_chain(
    rows: Iterable[Any],
    stored: list[Checkpoint],
    verifier: Verifier,
    *,
    anchors: list[Checkpoint] | None = None,
    copy: FileCopy | None = None,
) -> AuditReport:
    """Verify entry rows (in ``seq`` order) against checkpoints, anchors and the file copy.

    ``rows`` are objects with the ``audit_entries`` columns as attributes.
    """
    state = _State()
    _load(rows, state)
    _diagnose_moves(state)
    _report_sequence(state)
    external: dict[str, list[Checkpoint]] = {}
    if anchors is not None:
        external["external anchor"] = anchors
    if copy is not None:
        external["audit file copy"] = copy.checkpoints
    trusted, n_checked = _check_checkpoints(state, stored, external, verifier)
    walked_to = _walk_signed(state, trusted)
    _report_off_chain(state, walked_to)
    if copy is not None:
        _compare_file(state, copy, trusted)
    _report_truncation(state, trusted, copy)

    top = state.max_seq
    last_cp = max((c.seq for c in trusted), default=0)
    notes: list[str] = []
    if not state.rows:
        notes.append("audit trail is empty")
    elif top > last_cp:
        notes.append(
            f"{top - last_cp} entries after the last signed checkpoint "
            f"({_span(last_cp + 1, top)}): normal, the next checkpoint signs them (one is "
            "written when the vault closes); until then their removal would show only in the "
            "audit file copy or against an external anchor"
        )
    problems = tuple(text for _, text in sorted(state.problems, key=lambda p: p[0]))
    return AuditReport(
        ok=not problems,
        entries_checked=len(state.rows),
        checkpoints_checked=n_checked,
        problems=problems,
        notes=tuple(notes),
        head_seq=top,
        head_hash=state.rows[-1].stored if state.rows else GENESIS_HASH,
        last_checkpoint_seq=last_cp,
    )
