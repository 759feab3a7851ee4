"""The clinical pages in a real browser: worklist, viewer, analysis, heatmap, sign-off, reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from webkit import LAPTOP, TABLET, Browsing, no_page_scroll

from radvault.web.studies import WorklistRow


def image_loaded(page: object, selector: str) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        "s => { const i = document.querySelector(s); "
        "return i && !i.hidden && i.complete && i.naturalWidth > 0; }", arg=selector)


def test_a_radiologist_reads_analyses_signs_off_and_downloads(
        web: Browsing, uploaded: dict[str, str], analysed_xray: dict[str, str]) -> None:
    study = uploaded["study_id"]
    page = web.page("rad-n")

    # The worklist shows the new, unread study with its state.
    row = page.locator("tr", has=page.get_by_role("link", name=study))
    assert "Not analysed" in row.inner_text()

    # The study page shows the de-identified image; CT gets window presets.
    with page.expect_navigation():
        page.get_by_role("link", name=study).click()
    image_loaded(page, "#study-image")
    assert "not been analysed" in page.locator("#not-analysed").inner_text()
    with page.expect_navigation():
        page.get_by_role("link", name="Lung").click()
    assert "wc=-600" in page.url and "ww=1500" in page.url
    assert "wc=-600.0&ww=1500.0" in page.locator("#study-image").get_attribute("src")
    image_loaded(page, "#study-image")
    with page.expect_navigation():
        page.get_by_role("link", name="200%").click()
    assert page.locator("#study-image").evaluate("i => i.getBoundingClientRect().width") == 1024
    with page.expect_navigation():
        page.get_by_role("link", name="Fit").click()

    # Analysis: a job page that returns to the study once the model is done.
    page.get_by_role("button", name="Analyse this image").click()
    page.wait_for_url(re.compile(r"done=analysed"), timeout=60_000)
    assert "Analysis finished" in page.get_by_role("status").inner_text()
    probabilities = page.locator("#probabilities tbody tr")
    assert probabilities.count() == 3
    shown = [float(t.strip("<> %")) for t in probabilities.locator("td.num").all_inner_texts()]
    assert abs(sum(shown) - 100) < 0.5 and shown == sorted(shown, reverse=True)
    predicted = page.locator("#predicted-class").inner_text()
    assert predicted in {"normal", "pneumonia", "tumour"}
    flag = page.locator("#decision-support").inner_text()
    assert flag.startswith(("Refer to a radiologist", "No referral flag"))
    if flag.startswith("Refer"):  # its reasons in the reports' words, never raw codes
        assert "_" not in flag and "not confident enough" not in flag
        assert "because:" in flag
    # an override may be another class or the radiologist's own finding
    findings = page.locator("#override-label optgroup[label='Your own finding'] option")
    assert findings.all_inner_texts() == ["No finding of the model's classes",
                                          "Not assessable by this model"]

    # The heatmap toggles in place, from the keyboard too.
    page.get_by_role("button", name="Show heatmap").focus()
    toggle = page.locator("#heatmap-toggle")  # its name changes when pressed
    page.keyboard.press("Enter")
    image_loaded(page, "#heatmap-image")
    assert page.locator("#study-image").is_hidden()
    assert toggle.get_attribute("aria-pressed") == "true" and "heatmap=1" in page.url
    assert toggle.inner_text() == "Hide heatmap"
    web.shoot(page, "study-heatmap")
    page.keyboard.press(" ")
    assert page.locator("#heatmap-image").is_hidden() and page.locator("#study-image").is_visible()

    # Sign-off: accepted with a comment; the worklist then calls it signed off. A referred
    # answer has no decision chosen in advance: one click cannot sign it.
    accept = page.get_by_label(re.compile(r"^Accept the prediction"))
    assert accept.is_checked() == flag.startswith("No referral flag")
    accept.check()
    page.get_by_label("Comment").fill("Agree; no further action.")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign off").click()
    assert "Sign-off saved" in page.get_by_role("status").inner_text()
    signed = page.locator("#signoff").inner_text()
    assert f"Accepted: {predicted}, by rad-n" in signed and "Agree; no further" in signed

    # Reports: downloads in each format, pseudonymous and complete.
    for name, check in (("PDF", lambda b: b.startswith(b"%PDF-")),
                        ("HTML", lambda b: b"<html" in b.lower() and b"rad-n" in b),
                        ("FHIR R4 (JSON)",
                         lambda b: json.loads(b)["resourceType"] == "DiagnosticReport"),
                        ("DICOM SR", lambda b: b[128:132] == b"DICM")):
        with page.expect_download() as info:
            page.get_by_role("link", name=name, exact=True).click()
        download = info.value
        assert study in download.suggested_filename
        assert check(Path(download.path()).read_bytes()), name

    page.goto("/web/")
    assert "Signed off" in page.locator("tr", has=page.get_by_role("link", name=study)).inner_text()
    row = page.locator("tr", has=page.get_by_role("link", name=study)).inner_text()
    assert "RV-" in row  # the patient's pseudonym groups a patient's studies
    links = page.locator("table.worklist tbody th a").all_inner_texts()
    assert links.index(analysed_xray["study_id"]) < links.index(study)  # unread first
    web.shoot(page, "worklist")
    audited = {e.action for e in web.world.audit_since(0) if e.actor == "rad-n"}
    assert {"study.read", "result.read", "analysis.request", "report.sign", "report"} <= audited
    html = page.content()
    assert "CompressedSamples" not in html and "1CT1" not in html  # pseudonyms, never PHI


def test_a_physician_sees_results_heatmap_and_reports_but_no_image(
        web: Browsing, analysed_xray: dict[str, str]) -> None:
    page = web.page("phys-n")
    with page.expect_navigation():
        page.get_by_role("link", name=analysed_xray["study_id"]).click()
    assert page.locator("#study-image").count() == 0
    assert "shown to radiologists" in page.locator("#no-image").inner_text()
    assert page.locator("#probabilities tbody tr").count() == 3
    assert page.get_by_role("button", name="Sign off").count() == 0
    assert page.get_by_role("button", name=re.compile("Analyse")).count() == 0
    page.get_by_role("button", name="Show heatmap").click()
    image_loaded(page, "#heatmap-image")
    assert page.locator("#heatmap-image").get_attribute("alt").endswith("without the image")
    with page.expect_download() as info:
        page.get_by_role("link", name="HTML", exact=True).click()
    assert info.value.suggested_filename.endswith(".html")
    assert page.get_by_role("link", name="DICOM SR").count() == 0  # a JPEG source
    image_url = (f"/web/studies/{analysed_xray['study_id']}/instances/"
                 f"{analysed_xray['instance_id']}/image.png")
    assert page.request.get(image_url).status == 403


def test_flagged_unread_studies_come_first() -> None:
    from datetime import UTC, datetime

    from radvault.vault.catalog import StudyRecord

    def row(name: str, *, refer: bool, signed: bool, analysed: int = 1) -> WorklistRow:
        study = StudyRecord(name, "p", "north", "CT", None, datetime.now(UTC), "active",
                            None, 1)
        return WorklistRow(study, analysed, refer, signed, None, None)

    rows = [row("signed", refer=True, signed=True), row("new", refer=False, signed=False,
                                                         analysed=0),
            row("flagged", refer=True, signed=False), row("unread", refer=False, signed=False)]
    ordered = [r.study.study_id for r in sorted(rows, key=lambda r: r.rank)]
    assert ordered == ["flagged", "new", "unread", "signed"]
    assert [r.state for r in rows] == ["Signed off", "Not analysed", "Awaiting sign-off",
                                       "Awaiting sign-off"]


def test_an_ungranted_radiologist_is_refused_the_study(
        web: Browsing, uploaded: dict[str, str]) -> None:
    study, instance = uploaded["study_id"], uploaded["instance_id"]
    page = web.page("rad-s")
    assert page.get_by_role("link", name=study).count() == 0  # not in their worklist
    mark = web.world.mark()
    response = page.goto(f"/web/studies/{study}")
    assert response.status == 403
    assert page.get_by_role("heading", level=1).inner_text() == "Not allowed"
    assert page.request.get(f"/web/studies/{study}/instances/{instance}/image.png").status == 403
    denied = web.world.audit_since(mark, "access_denied")
    assert denied and all(e.actor == "rad-s" for e in denied)
    assert page.goto("/web/studies/no-such-study").status == 403  # no oracle for ids


def test_pages_fit_laptop_and_tablet_widths(web: Browsing,
                                            analysed_xray: dict[str, str]) -> None:
    for viewport in (LAPTOP, TABLET):
        page = web.page("rad-n", viewport=viewport)
        assert no_page_scroll(page), f"worklist scrolls sideways at {viewport}"
        page.goto(f"/web/studies/{analysed_xray['study_id']}")
        image_loaded(page, "#study-image")
        assert no_page_scroll(page), f"study page scrolls sideways at {viewport}"
        size = page.evaluate("getComputedStyle(document.body).fontSize")
        assert float(size.rstrip("px")) >= 16
        if viewport is TABLET:
            web.shoot(page, "study-tablet")


def test_a_post_without_the_csrf_token_is_refused(
        web: Browsing, analysed_xray: dict[str, str]) -> None:
    study, instance = analysed_xray["study_id"], analysed_xray["instance_id"]
    page = web.page("rad-n")
    page.goto(f"/web/studies/{study}")
    token = page.locator('input[name="csrf_token"]').first.input_value()
    url = f"/web/studies/{study}/instances/{instance}/signoff"
    form = {"decision": "accepted", "comment": "forged"}
    mark = web.world.mark()
    assert page.request.post(url, form=form, max_redirects=0).status == 403
    assert page.request.post(url, form={**form, "csrf_token": "guess"},
                             max_redirects=0).status == 403
    cross_site = page.request.post(url, form={**form, "csrf_token": token}, max_redirects=0,
                                   headers={"Origin": "https://evil.example"})
    assert cross_site.status == 403
    assert [e.details["reason"] for e in web.world.audit_since(mark, "request_refused")] == [
        "csrf"] * 3
    assert not web.world.audit_since(mark, "report.sign")  # nothing was signed
    unnamed = page.request.post(url, form={**form, "csrf_token": token}, max_redirects=0)
    assert unnamed.status == 303  # back to the study: no analysis named, nothing signed
    assert [e.details for e in web.world.audit_since(mark, "report.sign")] == [
        {"reason": "no analysis named"}]
    reviewed = page.locator('input[name="result_id"]').first.input_value()
    signed = page.request.post(url, form={**form, "csrf_token": token, "result_id": reviewed},
                               max_redirects=0)
    assert signed.status == 303
    assert [e.details.get("decision") for e in web.world.audit_since(mark, "report.sign")
            if e.outcome == "ok"] == ["accepted"]


def test_the_viewer_works_without_javascript(web: Browsing,
                                             analysed_xray: dict[str, str]) -> None:
    page = web.page("rad-n", javascript=False)
    page.goto(f"/web/studies/{analysed_xray['study_id']}")
    image_loaded(page, "#study-image")
    with page.expect_navigation():
        page.get_by_role("link", name="Show heatmap").click()  # a plain link without script
    assert page.url.endswith("heatmap=1")
    image_loaded(page, "#heatmap-image")
    assert page.locator("#study-image").is_hidden()
    with page.expect_navigation():
        page.get_by_role("link", name="Hide heatmap").click()
    image_loaded(page, "#study-image")
    assert page.locator("#heatmap-image").is_hidden()
