"""Principals, roles and the audit hand-off."""

from __future__ import annotations

import pytest

from radvault.access.principal import Principal, Role, emit_audit


def test_a_principal_checks_itself_when_built():
    p = Principal("rad", "radiologist", "north", {"view_study"})
    assert p.role is Role.RADIOLOGIST
    assert p.scopes == frozenset({"view_study"})
    with pytest.raises(ValueError, match="'surgeon' is not a valid Role"):
        Principal("rad", "surgeon")
    with pytest.raises(ValueError, match="a principal needs a username"):
        Principal("", Role.ADMIN)


def test_only_clinical_roles_need_a_site():
    assert {r for r in Role if r.needs_site} == {
        Role.TECHNOLOGIST, Role.RADIOLOGIST, Role.PHYSICIAN}


def test_audit_events_are_handed_on_positionally():
    calls = []
    emit_audit(lambda *args: calls.append(args), "rad", "login", "ok", ("a",), {"n": 1})
    assert calls == [("rad", "login", "ok", ["a"], {"n": 1})]
    emit_audit(None, "rad", "login", "ok")  # no sink: nothing to call, nothing raised


def test_a_failing_audit_sink_stops_the_operation():
    def broken(*_):
        raise OSError("disk full")

    with pytest.raises(OSError):
        emit_audit(broken, "rad", "login", "ok")
