"""The technologist's upload page in a real browser: stored, duplicate, refused, not for others."""

from __future__ import annotations

from pathlib import Path

from webkit import Browsing, pydicom_file


def upload(page: object, path: Path, **fields: str) -> int:
    page.get_by_label("Image file").set_input_files(str(path))  # type: ignore[attr-defined]
    if "modality" in fields:
        page.get_by_label("Modality").select_option(fields["modality"])  # type: ignore[attr-defined]
    if "body_part" in fields:
        page.get_by_label("Body part").fill(fields["body_part"])  # type: ignore[attr-defined]
    with page.expect_navigation() as nav:  # type: ignore[attr-defined]
        page.get_by_role("button", name="Upload").click()  # type: ignore[attr-defined]
    return int(nav.value.status)


def test_the_technologists_upload_is_stored_in_their_site(
        web: Browsing, uploaded: dict[str, str]) -> None:
    stored = web.world.service.vault.catalog.get_study(uploaded["study_id"])
    assert stored.site == "north" and stored.modality == "CT"
    adds = [e for e in web.world.audit_since(0) if e.actor == "tech-n"
            and uploaded["study_id"] in e.object_ids]
    assert adds, "the upload is audited under the technologist's name"


def test_the_same_file_again_is_a_duplicate(web: Browsing, uploaded: dict[str, str]) -> None:
    page = web.page("tech-n")
    assert upload(page, pydicom_file("CT_small.dcm")) == 200
    assert "Already stored" in page.locator("#upload-result").inner_text()
    assert page.locator("#upload-study").inner_text() == uploaded["study_id"]


def test_a_file_that_is_no_image_is_refused_with_the_reason(
        web: Browsing, tmp_path: Path) -> None:
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not an image at all" * 10)
    page = web.page("tech-n")
    mark = web.world.mark()
    assert upload(page, junk, modality="DX", body_part="CHEST") == 422
    assert "Refused" in page.locator("#upload-error").inner_text()
    assert page.get_by_label("Modality").input_value() == "DX"  # the form keeps its choices
    assert web.world.audit_since(mark, "ingest_refused")


def test_a_refused_upload_does_not_show_the_file_name(web: Browsing, tmp_path: Path) -> None:
    # The page says why, never the name the file was saved under (often a patient's).
    cut = tmp_path / "Truncatello_Basilisa_MRN11122233.dcm"
    cut.write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:-3000])
    page = web.page("tech-n")
    assert upload(page, cut) == 422
    shown = page.locator("#upload-error").inner_text()
    assert shown.startswith("Refused: ") and "truncated" in shown
    for secret in ("Truncatello", "Basilisa", "MRN11122233"):
        assert secret not in page.content()


def test_an_upload_over_the_cap_is_refused(web: Browsing, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024 + 10))  # the test cap: 1 MiB
    page = web.page("tech-n")
    assert upload(page, big) == 413
    assert "cap" in page.locator("#upload-error").inner_text()


def test_other_roles_may_not_upload(web: Browsing) -> None:
    page = web.page("rad-n")
    assert page.get_by_role("link", name="Upload").count() == 0
    assert page.goto("/web/upload").status == 403
    data = pydicom_file("MR_small.dcm").read_bytes()
    token = page.locator('input[name="csrf_token"]').first.input_value()
    r = page.request.post("/web/upload", multipart={
        "csrf_token": token,
        "file": {"name": "mr.dcm", "mimeType": "application/dicom", "buffer": data}},
        max_redirects=0)
    assert r.status == 403


def test_an_upload_without_the_csrf_token_is_refused(web: Browsing) -> None:
    page = web.page("tech-n")
    data = pydicom_file("MR_small.dcm").read_bytes()
    mark = web.world.mark()
    r = page.request.post("/web/upload", multipart={
        "file": {"name": "mr.dcm", "mimeType": "application/dicom", "buffer": data}},
        max_redirects=0)
    assert r.status == 403
    assert [e.details.get("reason") for e in web.world.audit_since(mark, "request_refused")] \
        == ["csrf"]
    assert not web.world.audit_since(mark, "ingest")


def test_an_upload_while_others_hold_their_memory_is_refused_for_now(web: Browsing) -> None:
    budget = web.world.server.server.config.app.state.upload_budget
    others = budget.total_bytes - budget.in_use - 1000  # uploads in flight, all but 1000 bytes
    page = web.page("tech-n")
    page.get_by_label("Image file").set_input_files(str(pydicom_file("CT_small.dcm")))
    mark = web.world.mark()
    budget.reserve(others)
    try:
        with page.expect_navigation() as nav:
            page.get_by_role("button", name="Upload").click()
    finally:
        budget.release(others)
    assert nav.value.status == 503
    assert nav.value.headers["retry-after"] == "5"
    assert "busy with other uploads" in page.locator("#upload-error").inner_text()
    assert [e.details for e in web.world.audit_since(mark, "ingest_refused")] == [
        {"error": "UploadBudgetExhausted"}]
    assert budget.in_use == 0


def test_a_body_part_that_is_no_dicom_term_is_refused_and_not_shown_again(
        web: Browsing, tmp_path: Path) -> None:
    # A name typed into the wrong field must not become an image "of unknown body part".
    from PIL import Image

    png = tmp_path / "hand.png"
    Image.new("L", (48, 40), 90).save(png)
    page = web.page("tech-n")
    mark = web.world.mark()
    assert upload(page, png, modality="DX", body_part="Doe_Jane") == 400
    shown = page.locator("#upload-error").inner_text()
    assert shown.startswith("Refused: body_part is not a DICOM ")
    assert "Doe_Jane" not in page.content()
    assert page.get_by_label("Body part").input_value() == ""
    assert page.get_by_label("Modality").input_value() == "DX"  # a valid choice is kept
    assert [e.details for e in web.world.audit_since(mark, "ingest_refused")] == [
        {"error": "InvalidRequest"}]
    assert not web.world.audit_since(mark, "ingest")
