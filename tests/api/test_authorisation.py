"""Authorisation over HTTP: each role's allowed and refused actions, and broken
object-level authorisation attempts. Every refusal is a 4xx and is audited."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

from radvault.pipeline.clinical import operator_principal

REASON = "follow-up call about the findings"


@pytest.fixture(scope="module")
def paths(north_study, south_study, analysed):
    s, i = north_study["study_id"], north_study["instance_id"]
    base = f"/api/v1/studies/{s}/instances/{i}"
    return {
        "study": f"/api/v1/studies/{s}", "image": f"{base}/image", "result": f"{base}/result",
        "heatmap": f"{base}/heatmap", "signoff": f"{base}/signoff",
        "analyses": f"/api/v1/studies/{s}/analyses", "report": f"/api/v1/studies/{s}/report",
        "reidentify": f"/api/v1/studies/{s}/reidentify",
        "job": f"/api/v1/jobs/{analysed['job_id']}",
        "south_study": f"/api/v1/studies/{south_study['study_id']}",
        "south_instance": south_study["instance_id"], "north_instance": i,
    }


SIGNOFF = {"decision": "accepted", "comment": "", "result_id": "0" * 32}
# (user, method, path key, json body, expected status)
MATRIX = [
    ("rad-n", "GET", "/api/v1/studies", None, 200),
    ("phys-n", "GET", "/api/v1/studies", None, 200),
    ("tech-n", "GET", "/api/v1/studies", None, 403),
    ("audit1", "GET", "/api/v1/studies", None, 403),
    ("admin1", "GET", "/api/v1/studies", None, 403),
    ("rad-n", "GET", "study", None, 200),
    ("phys-n", "GET", "study", None, 200),
    ("rad-s", "GET", "study", None, 403),
    ("tech-n", "GET", "study", None, 403),
    ("admin1", "GET", "study", None, 403),
    ("audit1", "GET", "study", None, 403),
    ("rad-n", "GET", "image", None, 200),
    ("phys-n", "GET", "image", None, 403),
    ("rad-s", "GET", "image", None, 403),
    ("admin1", "GET", "image", None, 403),
    ("rad-n", "GET", "result", None, 200),
    ("phys-n", "GET", "result", None, 200),
    ("rad-s", "GET", "result", None, 403),
    ("tech-n", "GET", "result", None, 403),
    ("admin1", "GET", "result", None, 403),
    ("phys-n", "GET", "heatmap", None, 200),
    ("audit1", "GET", "heatmap", None, 403),
    ("rad-n", "GET", "job", None, 200),
    ("rad-s", "GET", "job", None, 403),
    ("phys-n", "POST", "analyses", {}, 403),
    ("tech-n", "POST", "analyses", {}, 403),
    ("rad-s", "POST", "analyses", {}, 403),
    ("admin1", "POST", "analyses", {}, 403),
    ("phys-n", "GET", "report", None, 200),
    ("rad-n", "GET", "report", None, 200),
    ("admin1", "GET", "report", None, 403),
    ("audit1", "GET", "report", None, 403),
    ("rad-s", "GET", "report", None, 403),
    ("phys-n", "POST", "signoff", SIGNOFF, 403),
    ("rad-s", "POST", "signoff", SIGNOFF, 403),
    ("tech-n", "POST", "signoff", SIGNOFF, 403),
    ("phys-n", "POST", "reidentify", {"reason": REASON}, 200),
    ("phys-n", "POST", "reidentify", {"reason": "curious"}, 403),
    ("rad-n", "POST", "reidentify", {"reason": REASON}, 403),
    ("admin1", "POST", "reidentify", {"reason": REASON}, 403),
    ("audit1", "POST", "reidentify", {"reason": REASON}, 403),
    ("audit1", "GET", "/api/v1/audit", None, 200),
    ("audit1", "GET", "/api/v1/audit/verify", None, 200),
    ("rad-n", "GET", "/api/v1/audit", None, 403),
    ("admin1", "GET", "/api/v1/audit", None, 403),
    ("phys-n", "GET", "/api/v1/audit", None, 403),
    ("admin1", "GET", "/api/v1/admin/users", None, 200),
    ("admin1", "GET", "/api/v1/admin/sites", None, 200),
    ("rad-n", "GET", "/api/v1/admin/users", None, 403),
    ("audit1", "POST", "/api/v1/admin/sites", {"name": "east"}, 403),
    ("tech-n", "POST", "/api/v1/admin/users/rad-s/grants", {"site": "north"}, 403),
    ("rad-n", "POST", "/api/v1/admin/users/rad-n/grants", {"site": "south"}, 403),
]


@pytest.mark.parametrize(("user", "method", "path", "body", "expected"), MATRIX,
                         ids=[f"{u}-{m}-{p.rsplit('/', 1)[-1]}-{e}" for u, m, p, _, e in MATRIX])
def test_each_role_gets_what_its_duties_allow(world, paths, user, method, path, body, expected):
    mark = world.mark()
    r = world.request(method, user, paths.get(path, path), json=body)
    assert r.status_code == expected, r.text
    denied = [e for e in world.audit_since(mark, "access_denied") if e.actor == user]
    if expected == 403:
        assert r.json()["code"] == "access_denied"
        assert len(denied) == 1, "every refusal is audited exactly once"
    else:
        assert denied == []


def test_uploads_are_for_technologists_of_their_own_site(world):
    for user in ("rad-n", "phys-n", "admin1", "audit1"):
        mark = world.mark()
        r = world.upload(user, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "x.png")
        assert r.status_code == 403, (user, r.text)
        assert world.audit_since(mark, "access_denied")


def test_another_sites_or_guessed_study_ids_are_refused_alike(world, paths, north_study):
    answers = []
    for study in (north_study["study_id"], "2.25.1", "2.25.99999999999999999999999999999"):
        mark = world.mark()
        r = world.get("rad-s", f"/api/v1/studies/{study}")
        assert r.status_code == 403
        (refused,) = world.audit_since(mark, "access_denied")
        if study == north_study["study_id"]:
            assert refused.object_ids == (study, "site:north")
        else:  # a guess is named only by its keyed digest
            assert refused.object_ids == ()
            assert refused.details["unknown_id_hmac"] == world.vault.audit_digest(study)
        answers.append((r.status_code, r.json()))
    assert len({repr(a) for a in answers}) == 1, "an unknown id is answered like a forbidden one"


def audit_trail_text(world) -> str:
    """The audit trail as stored: the catalog's audit table and the audit.log file copy."""
    with world.vault.catalog.engine.connect() as conn:
        rows = conn.execute(text("SELECT actor, object_ids, details FROM audit_entries")).all()
    return repr(rows) + world.vault.paths.audit_file.read_text(encoding="utf-8")


@pytest.mark.parametrize(("user", "method", "path", "body"), [
    ("rad-n", "GET", "/api/v1/studies/MRN55512345", None),
    ("phys-n", "POST", "/api/v1/studies/ACC77331/reidentify", {"reason": REASON}),
    ("rad-n", "GET", "/api/v1/studies/ACC77332/instances/MRN55512346/image", None),
])
def test_an_id_pasted_into_a_url_leaves_no_trace_of_itself_in_the_audit_trail(
        world, user, method, path, body):
    typed = [part for part in path.split("/") if part[:3] in ("MRN", "ACC")]
    mark = world.mark()
    r = world.request(method, user, path, json=body)
    assert r.status_code == 403 and r.json()["code"] == "access_denied"
    (refused,) = world.audit_since(mark, "access_denied")  # the refusal is still audited
    assert refused.actor == user and refused.outcome == "refused"
    assert refused.object_ids == ()
    assert refused.details["unknown_id_hmac"] == world.vault.audit_digest(typed[0])
    trail = audit_trail_text(world)
    assert all(t not in trail for t in typed)


def test_a_study_is_granted_over_http_only_once_the_catalog_holds_it(world):
    world.add_user("grant-probe", "radiologist", "south")
    mark = world.mark()
    r = world.post("admin1", "/api/v1/admin/users/grant-probe/grants",
                   json={"study_id": "ACC77333"})
    assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
    assert world.get("admin1", "/api/v1/admin/users/grant-probe/grants").json() == []
    assert [e.action for e in world.audit_since(mark) if e.actor == "admin1"] == []
    assert "ACC77333" not in audit_trail_text(world)


def test_listing_never_shows_another_sites_studies(world, north_study, south_study):
    ids = {s["study_id"] for s in world.get("rad-s", "/api/v1/studies").json()}
    assert south_study["study_id"] in ids and north_study["study_id"] not in ids
    r = world.get("rad-s", "/api/v1/studies", params={"site": "north"})
    assert r.status_code == 200 and r.json() == []


def test_an_instance_of_another_study_is_not_reached_through_a_granted_one(world, paths):
    mark = world.mark()
    r = world.get("rad-n", f"{paths['study']}/instances/{paths['south_instance']}/image")
    assert r.status_code == 404
    r = world.get("rad-s", f"{paths['south_study']}/instances/{paths['north_instance']}/result")
    assert r.status_code == 404
    assert not [e for e in world.audit_since(mark, "read") if e.actor in ("rad-n", "rad-s")]


def test_unknown_jobs_are_not_found_and_audited(world):
    mark = world.mark()
    r = world.get("rad-n", "/api/v1/jobs/0123456789abcdef0123456789abcdef")
    assert r.status_code == 404
    assert world.audit_since(mark, "access_denied")[0].details["reason"] == "unknown job"


@pytest.mark.parametrize("raw", [
    "/api/v1/studies/%2E%2E",
    "/api/v1/studies/..%2F..%2Fetc%2Fpasswd",
    "/api/v1/studies/2.25.1/instances/..%5C..%5Cboot.ini/image",
    "/api/v1/studies/{north}/instances/..%5Cboot.ini/image",
    "/api/v1/jobs/..%2F..%2Fjobs",
])
def test_path_traversal_in_ids_is_refused_and_audited(world, north_study, raw):
    mark = world.mark()
    with world.client() as c:
        r = c.get(raw.replace("{north}", north_study["study_id"]), headers=world.auth("rad-n"))
    assert r.status_code in (403, 404), r.text
    events = world.audit_since(mark)
    assert any(e.action in ("access_denied", "request_refused") and e.outcome == "refused"
               for e in events), [e.action for e in events]
    assert "passwd" not in repr([e.to_dict() for e in events])


def test_a_withdrawn_grant_takes_effect_at_once(world, north_study):
    operator = operator_principal("cli:tests")
    study = north_study["study_id"]
    world.add_user("visiting-rad", "radiologist", "south")
    world.service.grant(operator, "visiting-rad", study_id=study)
    assert world.get("visiting-rad", f"/api/v1/studies/{study}").status_code == 200
    listed = world.get("visiting-rad", "/api/v1/studies").json()
    assert [s["study_id"] for s in listed] == [study]
    world.service.revoke_grant(operator, "visiting-rad", study_id=study)
    assert world.get("visiting-rad", f"/api/v1/studies/{study}").status_code == 403


def test_admins_manage_users_and_grants_over_http(world):
    r = world.post("admin1", "/api/v1/admin/users",
                   json={"username": "new-phys", "role": "physician", "site": "north",
                         "password": "Quiet-Harbour-77!"})
    assert r.status_code == 201, r.text
    assert "password" not in r.text.lower().replace("has_password", "")
    r = world.post("admin1", "/api/v1/admin/users/new-phys/grants", json={"site": "north"})
    assert r.status_code == 201
    assert world.login("new-phys", "Quiet-Harbour-77!")["access_token"]
    r = world.post("admin1", "/api/v1/admin/users", json={"username": "weak", "role": "auditor",
                                                           "password": "password"})
    assert r.status_code == 422 and r.json()["code"] == "password_policy"
    r = world.post("admin1", "/api/v1/admin/users", json={"username": "new-phys",
                                                           "role": "auditor"})
    assert r.status_code == 409
    r = world.request("DELETE", "admin1", "/api/v1/admin/users/new-phys/grants",
                      params={"site": "north"})
    assert r.status_code == 204
    assert world.post("admin1", "/api/v1/admin/users/new-phys/lock").status_code == 204
    assert world.post("admin1", "/api/v1/admin/users/new-phys/unlock").status_code == 204
    assert world.request("DELETE", "admin1", "/api/v1/admin/users/new-phys").status_code == 204
    assert world.request("DELETE", "admin1", "/api/v1/admin/users/admin1").status_code == 403


def test_a_traversal_path_is_audited_only_under_a_keyed_digest(world):
    raw = "/api/v1/jobs/..%2F..%2FSummer2024!Quib"
    mark = world.mark()
    with world.client() as c:
        r = c.get(raw, headers=world.auth("rad-n"))
    assert r.status_code == 404
    (refused,) = world.audit_since(mark, "request_refused")
    assert refused.details == {"reason": "path traversal",
                               "path_hmac": world.vault.audit_digest(raw.lower())}
    assert hashlib.sha256(raw.lower().encode()).hexdigest()[:16] not in audit_trail_text(world)
