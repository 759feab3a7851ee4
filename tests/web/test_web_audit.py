"""The auditor's page in a real browser: search and verify; nothing clinical."""

from __future__ import annotations

from webkit import Browsing


def test_the_auditor_searches_and_verifies_the_trail(
        web: Browsing, uploaded: dict[str, str]) -> None:
    page = web.page("audit1")
    assert page.locator("table.audit tbody tr").count() > 0
    page.get_by_label("Action").fill("ingest")
    page.get_by_label("Verify the chain").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    actions = page.locator("table.audit tbody tr td.mono:nth-child(4)").all_inner_texts()
    assert actions and set(actions) == {"ingest"}
    assert "Chain intact." in page.locator("#verify-result").inner_text()
    page.goto("/web/audit?limit=12")
    web.shoot(page, "audit")
    mine = [e.action for e in web.world.audit_since(0) if e.actor == "audit1"]
    assert "audit.read" in mine and "audit_verify" in mine


def test_the_auditor_is_refused_clinical_pages(web: Browsing,
                                               uploaded: dict[str, str]) -> None:
    page = web.page("audit1")
    assert page.get_by_role("link", name="Worklist").count() == 0
    mark = web.world.mark()
    for url in ("/web/", f"/web/studies/{uploaded['study_id']}",
                f"/web/studies/{uploaded['study_id']}/report?format=pdf"):
        response = page.goto(url)
        assert response.status == 403, url
        assert page.get_by_role("heading", level=1).inner_text() == "Not allowed"
    assert len(web.world.audit_since(mark, "access_denied")) >= 3


def test_a_bad_filter_is_answered_as_a_page(web: Browsing) -> None:
    page = web.page("audit1")
    response = page.goto("/web/audit?action=DROP%20TABLE")
    assert response.status == 400
    assert "invalid action filter" in page.get_by_role("alert").inner_text()
