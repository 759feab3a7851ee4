"""Uploads over HTTP: streamed and capped; oversized, malformed, foreign and oddly named
uploads are refused with the right 4xx and audited."""

from __future__ import annotations

import io
import socket

import numpy as np
import pydicom
import pytest
from apikit import UPLOAD_CAP, pydicom_file
from PIL import Image

UPLOAD = "/api/v1/uploads"


def png_bytes(seed: int, shape: tuple[int, int] = (40, 56)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def refused_upload(world, mark: int) -> list:
    return [e for e in world.audit_since(mark) if e.action in ("ingest_refused", "access_denied")]


def test_a_png_is_stored_once_and_recognised_after(world):
    data = png_bytes(1)
    r = world.upload("tech-n", data, "knee.png", modality="DX", body_part="KNEE")
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["status"] == "stored" and first["modality"] == "DX"
    again = world.upload("tech-n", data, "knee-copy.png")
    assert again.status_code == 200
    assert again.json() == {**first, "status": "duplicate", "modality": again.json()["modality"]}


def test_an_oversized_upload_is_refused_before_it_is_read(world):
    # Only the headers are sent: a server that read the body first would wait for it
    # and time out; this one answers 413 from the declared length alone.
    mark = world.mark()
    host, port = world.base_url.removeprefix("http://").split(":")
    head = (f"POST {UPLOAD} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {world.token('tech-n')}\r\n"
            "Content-Type: multipart/form-data; boundary=never-sent\r\n"
            f"Content-Length: {UPLOAD_CAP + 200_000}\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, "connection closed without an answer"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert [e.details["error"] for e in refused_upload(world, mark)] == ["ImageTooLarge"]


def test_an_oversized_upload_sent_in_full_is_refused(world):
    mark = world.mark()
    r = world.upload("tech-n", b"\0" * (UPLOAD_CAP + 200_000), "huge.dcm")
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    assert [e.details["error"] for e in refused_upload(world, mark)] == ["ImageTooLarge"]


def test_an_oversized_streamed_upload_is_cut_off_at_the_cap(world):
    boundary = "radvault-test-boundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"big.dcm\"\r\n\r\n").encode()
        for _ in range(UPLOAD_CAP // 65536 + 4):
            yield b"\1" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    mark = world.mark()
    with world.client() as c:
        r = c.post(UPLOAD, content=body(), headers={
            **world.auth("tech-n"), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    assert [e.details["error"] for e in refused_upload(world, mark)] == ["ImageTooLarge"]


@pytest.mark.parametrize(("kind", "request_kwargs"), [
    ("json body", {"json": {"file": "x"}}),
    ("no file part", {"data": {"modality": "CT"}, "files": {"other": ("a.txt", b"x")}}),
    ("garbage multipart", {"content": b"--nope\r\nxx", "headers": {
        "Content-Type": "multipart/form-data; boundary=abc"}}),
    ("unknown field", {"files": {"file": ("a.png", png_bytes(2))}, "data": {"patient": "Doe"}}),
])
def test_malformed_uploads_are_refused_and_audited(world, kind, request_kwargs):
    mark = world.mark()
    headers = {**world.auth("tech-n"), **request_kwargs.pop("headers", {})}
    with world.client() as c:
        r = c.post(UPLOAD, headers=headers, **request_kwargs)
    assert r.status_code == 400, (kind, r.text)
    assert r.json()["code"] == "invalid_request"
    assert [e.details["error"] for e in refused_upload(world, mark)] == ["InvalidRequest"]
    assert "Doe" not in r.text


@pytest.mark.parametrize(("name", "data", "error"), [
    ("notes.txt", b"Patient: Jane Doe, born 1970-01-01\n" * 20, "NotAnImage"),
    ("cut.dcm", pydicom_file("CT_small.dcm").read_bytes()[:-5000], "CorruptImage"),
])
def test_files_that_are_not_readable_images_are_refused_and_audited(world, name, data, error):
    mark = world.mark()
    r = world.upload("tech-n", data, name)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_image"
    assert [(e["loc"], e["type"]) for e in r.json()["errors"]] == [(["body", "file"], error)]
    assert "Jane" not in r.text and "1970" not in r.text
    refused = refused_upload(world, mark)
    assert [e.details["error"] for e in refused] == [error]
    assert "Jane" not in repr([e.to_dict() for e in refused])


@pytest.mark.parametrize("name", ["../../etc/passwd.png", "..\\..\\boot.png", "/abs/a.png",
                                  "..", ""])
def test_path_traversal_in_file_names_is_refused_and_audited(world, name):
    mark = world.mark()
    r = world.upload("tech-n", png_bytes(3), name)
    assert r.status_code == 400, (name, r.text)
    refused = refused_upload(world, mark)
    assert [e.details["error"] for e in refused] == ["InvalidRequest"]
    assert "passwd" not in repr([e.to_dict() for e in refused])


def test_an_image_of_another_sites_study_is_refused(world, north_study):
    original = pydicom_file("CT_small.dcm").read_bytes()
    mark = world.mark()
    r = world.upload("tech-s", original, "CT_small.dcm")  # the very file north stored
    assert r.status_code == 403, r.text
    assert north_study["study_id"] not in r.text
    # Another image of the same study would join north's study: refused too.
    ds = pydicom.dcmread(io.BytesIO(original))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    r = world.upload("tech-s", buffer.getvalue(), "CT_small-2.dcm")
    assert r.status_code == 403, r.text
    denied = world.audit_since(mark, "access_denied")
    assert [e.details["reason"] for e in denied] == [
        "the image belongs to a study of another site"] * 2


def test_an_upload_without_a_token_is_refused_and_audited(world):
    mark = world.mark()
    with world.client() as c:
        r = c.post(UPLOAD, files={"file": ("a.png", png_bytes(4))})
    assert r.status_code == 401
    assert world.audit_since(mark, "token_refused")


PATIENT_FILE = "Truncatello_Basilisa_MRN11122233.dcm"


def planted_dicom(**elements: str) -> bytes:
    """CT_small.dcm with elements (or its File Meta Transfer Syntax UID) replaced."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    for keyword, value in elements.items():
        setattr(ds.file_meta if keyword == "TransferSyntaxUID" else ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("kind", "planted"), [
    ("truncated", ""),
    ("photometric", "MRN12121212"),
    ("transfer syntax", "1.2.840.55512345.19470315"),
])
def test_a_refused_upload_names_neither_the_file_nor_a_header_value(world, kind, planted):
    data = {
        "truncated": lambda: pydicom_file("CT_small.dcm").read_bytes()[:-3000],
        "photometric": lambda: planted_dicom(PhotometricInterpretation=planted),
        "transfer syntax": lambda: planted_dicom(TransferSyntaxUID=planted),
    }[kind]()
    mark = world.mark()
    r = world.upload("tech-n", data, PATIENT_FILE)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_image" and r.json()["detail"]
    secrets = ["Truncatello", "Basilisa", "MRN11122233", *([planted] if planted else [])]
    for secret in secrets:
        assert secret not in r.text, (kind, r.text)
    refused = refused_upload(world, mark)
    assert refused and not any(s in repr([e.to_dict() for e in refused]) for s in secrets)
