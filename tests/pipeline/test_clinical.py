"""The clinical use cases in process: policy on every method and object, scoped search,
idempotent analysis, signed sign-offs, sealed comments and reasons, restart-proof tokens."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import text

from radvault.access.policy import scopes_for
from radvault.access.principal import Principal, Role
from radvault.analysis.export import Ed25519Signer, input_spec, write_model
from radvault.config import PreprocessSettings
from radvault.errors import (
    AccessDenied,
    AuthenticationFailed,
    IntegrityError,
    ObjectNotFound,
    SignOffConflict,
    UnknownModel,
)
from radvault.imaging.preprocess import settings_to_dict
from radvault.jobs import JobInfo
from radvault.jobs._job import running_job
from radvault.pipeline.clinical import (
    ClinicalService,
    InvalidRequest,
    ServiceSettings,
    operator_principal,
    token_signing_key,
)
from radvault.vault.vault import Vault

PASSWORD = "Vivid-Lantern-42!"
PRE = PreprocessSettings(size=32, denoise=False, clahe_tile_grid=4)
REASON = "needed for an urgent call to the ward"


def tiny_model(root: Path) -> Path:
    """A signed two-class ONNX model (conv, pool, linear) with CAM weights, as radbench6."""
    rng = np.random.default_rng(0)
    w = {"cw": rng.normal(0, .5, (2, 3, 3, 3)), "cb": rng.normal(0, .1, 2),
         "fw": rng.normal(0, 1, (2, 2)), "fb": rng.normal(0, .1, 2)}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "cw", "cb"], ["c"], kernel_shape=[3, 3],
                          strides=[4, 4], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["features"]),
         helper.make_node("GlobalAveragePool", ["features"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    signer = Ed25519Signer.generate()
    write_model(root / "radbench6", model.SerializeToString(), {
        "task": "tiny2", "classes": ["normal", "abnormal"], "input": input_spec(32),
        "preprocessing": settings_to_dict(PRE), "temperature": 1.0,
        "trained_on": [{"modality": "DX", "body_part": ""}],
        "cam": {"output": "features", "weight": w["fw"].tolist(), "bias": w["fb"].tolist()}},
        signer)
    (root / "keys").mkdir()
    (root / "keys" / f"{signer.key_id}.pub").write_bytes(signer.public_pem())
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models"))


def principal(name: str, role: str, site: str | None = None) -> Principal:
    return Principal(name, Role(role), site, scopes_for(role))


class Clinic:
    """A vault, its service (jobs run on demand), two sites and one user per role."""

    def __init__(self, kit, home: Path, models: Path) -> None:
        self.settings = kit.new_settings(home, preprocess=PRE)
        self.vault = kit.init_vault(self.settings)
        self.models = models
        self.service = self.build()
        self.operator = operator_principal("cli:tests")
        s = self.service
        for site in ("north", "south"):
            s.add_site(self.operator, site)
        self.p: dict[str, Principal] = {}
        for name, role, site in (("tech-n", "technologist", "north"),
                                 ("tech-s", "technologist", "south"),
                                 ("rad-n", "radiologist", "north"),
                                 ("rad-s", "radiologist", "south"),
                                 ("phys-n", "physician", "north"),
                                 ("audit1", "auditor", None), ("admin1", "admin", None)):
            s.add_user(self.operator, name, role, site=site, password=PASSWORD)
            if role in ("radiologist", "physician"):
                s.grant(self.operator, name, site=site)
            self.p[name] = principal(name, role, site)

    def build(self) -> ClinicalService:
        return ClinicalService.build(self.vault, ServiceSettings(
            argon2=(1, 8, 1), start_workers=False, models_dir=self.models,
            issuer="https://radvault.test"))

    def upload_png(self, kit, tmp: Path, seed: int, who: str = "tech-n") -> str:
        data = kit.make_raster(tmp / f"in-{seed}.png", seed).read_bytes()
        return self.service.upload(self.p[who], data, f"in-{seed}.png", modality="DX").study_id

    def denied(self, mark: int) -> list:
        return [e for e in self.vault.audit.query(action="access_denied", limit=200)
                if e.seq > mark]

    def mark(self) -> int:
        return self.vault.audit.tail(1)[-1].seq


@pytest.fixture
def clinic(kit, tmp_path, models):
    c = Clinic(kit, tmp_path / "home", models)
    yield c
    c.vault.close()


UNGUARDED = {"build", "start", "stop", "run_pending_jobs", "login", "refresh", "logout",
             "authenticate", "jwks"}


def test_every_use_case_takes_the_principal_first():
    public = [name for name, _ in inspect.getmembers(ClinicalService, inspect.isfunction)
              if not name.startswith("_") and name not in UNGUARDED]
    assert len(public) >= 25
    for name in public:
        params = list(inspect.signature(getattr(ClinicalService, name)).parameters)
        assert params[:2] == ["self", "principal"], name


def test_roles_are_refused_outside_their_duties_and_audited(clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 1)
    s, p = clinic.service, clinic.p
    refusals = [
        lambda: s.list_studies(p["tech-n"]),
        lambda: s.study(p["audit1"], study),
        lambda: s.study(p["admin1"], study),
        lambda: s.study(p["rad-s"], study),
        lambda: s.start_analysis(p["phys-n"], study),
        lambda: s.reidentify(p["rad-n"], study, REASON),
        lambda: s.reidentify(p["phys-n"], study, "too short"),
        lambda: s.audit_entries(p["rad-n"]),
        lambda: s.add_site(p["rad-n"], "east"),
        lambda: s.grant(p["phys-n"], "phys-n", site="south"),
        lambda: s.upload(p["rad-n"], b"x", "x.png"),
        lambda: s.upload(operator_principal("cli:x"), b"x", "x.png"),
    ]
    for attempt in refusals:
        mark = clinic.mark()
        with pytest.raises(AccessDenied):
            attempt()
        assert len(clinic.denied(mark)) == 1


def test_search_is_limited_to_grants_and_pages_in_order(clinic, kit, tmp_path):
    north = [clinic.upload_png(kit, tmp_path, i) for i in range(5)]
    south = [clinic.upload_png(kit, tmp_path, 10 + i, "tech-s") for i in range(3)]
    s, p = clinic.service, clinic.p
    seen = [x.study_id for x in s.list_studies(p["rad-n"], limit=500)]
    assert sorted(seen) == sorted(north)
    pages = [x.study_id for off in (0, 2, 4) for x in s.list_studies(p["rad-n"], limit=2,
                                                                    offset=off)]
    assert pages == seen
    s.add_user(clinic.operator, "guest", "radiologist", site="south")
    s.grant(clinic.operator, "guest", study_id=north[0])
    guest = principal("guest", "radiologist", "south")
    assert [x.study_id for x in s.list_studies(guest)] == [north[0]]
    s.grant(clinic.operator, "guest", site="south")
    assert {x.study_id for x in s.list_studies(guest)} == {north[0], *south}
    assert s.list_studies(guest, site="north") == [s.vault.catalog.get_study(north[0])]
    assert s.list_studies(guest, modality="CT") == []
    with pytest.raises(InvalidRequest):
        s.list_studies(guest, limit=0)


def test_analysis_stores_one_result_however_often_its_job_runs(clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 2)
    s, rad = clinic.service, clinic.p["rad-n"]
    job = s.start_analysis(rad, study)
    assert s.start_analysis(rad, study).job_id == job.job_id  # idempotent request
    assert s.run_pending_jobs() == 1
    done = s.job(rad, job.job_id)
    assert done.status == "succeeded" and len(done.results) == 1
    instance = done.instance_ids[0]
    with running_job(JobInfo(job.job_id, "clinical.analyse", "rad-n", 2)):
        again = s._run_analysis({"study_id": study, "instance_ids": [instance], "model": None})
    assert again["results"] == list(done.results)  # a re-run finds its own result
    assert len(s.results(rad, study, instance)) == 1


def test_a_model_gone_before_its_job_runs_fails_the_job_which_can_be_asked_for_again(
        clinic, kit, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(clinic.models, models)
    clinic.models = models
    s = clinic.service = clinic.build()
    study = clinic.upload_png(kit, tmp_path, 3)
    rad = clinic.p["rad-n"]
    first = s.start_analysis(rad, study, model="radbench6")  # there when asked for
    (models / "radbench6").rename(tmp_path / "retired")  # gone when the job runs
    s.run_pending_jobs()
    assert s.job(rad, first.job_id).status == "failed"
    assert s.job(rad, first.job_id).error == "ModelError"
    (tmp_path / "retired").rename(models / "radbench6")
    second = s.start_analysis(rad, study, model="radbench6")
    assert second.job_id != first.job_id and second.status == "pending"
    s.run_pending_jobs()
    assert s.job(rad, second.job_id).status == "succeeded"


def test_an_unknown_model_is_refused_before_a_job_is_queued_and_audited(clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 9)
    s, rad = clinic.service, clinic.p["rad-n"]
    mark = clinic.mark()
    with pytest.raises(UnknownModel, match="choose one of radbench6"):
        s.start_analysis(rad, study, model="Doe_Jane")
    with pytest.raises(InvalidRequest, match="invalid model name"):
        s.start_analysis(rad, study, model="../Doe Jane")
    assert s.run_pending_jobs() == 0  # nothing was queued
    asked = [e for e in s.vault.audit.query(action="analysis.request") if e.seq > mark]
    assert sorted((e.actor, e.outcome, e.details["reason"]) for e in asked) == [
        ("rad-n", "refused", "malformed model name"), ("rad-n", "refused", "unknown model")]
    assert {e.details["model_hmac"] for e in asked} == {
        s.vault.audit_digest("Doe_Jane"), s.vault.audit_digest("../Doe Jane")}
    assert "Doe" not in (clinic.settings.home / "audit.log").read_text(encoding="utf-8")
    with pytest.raises(AccessDenied):  # the grant is checked first: no probing of models
        s.start_analysis(clinic.p["rad-s"], study, model="Doe_Jane")


def test_a_grant_withdrawn_before_the_job_runs_stops_it(clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 4)
    s = clinic.service
    job = s.start_analysis(clinic.p["rad-n"], study)
    s.revoke_grant(clinic.operator, "rad-n", site="north")
    s.run_pending_jobs()
    assert s.vault.catalog.results_of_instance(job.instance_ids[0]) == []
    s.grant(clinic.operator, "rad-n", site="north")
    assert s.job(clinic.p["rad-n"], job.job_id).error == "AccessDenied"


def test_a_job_whose_requester_was_locked_since_is_refused_and_audited(clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 6)
    s = clinic.service
    job = s.start_analysis(clinic.p["rad-n"], study)
    s.accounts.lock("cli:admin", "rad-n")
    s.run_pending_jobs()
    assert s.vault.catalog.results_of_instance(job.instance_ids[0]) == []
    refused = [e for e in s.vault.audit.query(action="access_denied")
               if list(e.object_ids) == [job.job_id]]
    assert [(e.actor, e.outcome, e.details["reason"]) for e in refused] == [
        ("rad-n", "refused", "the job's requester is not active")]


def test_signoffs_are_signed_and_their_comments_sealed(clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 5)
    s, rad = clinic.service, clinic.p["rad-n"]
    job = s.start_analysis(rad, study)
    s.run_pending_jobs()
    instance = job.instance_ids[0]
    result = s.latest_result(rad, study, instance)
    other = next(c for c in result.probabilities if c != result.predicted_class)
    with pytest.raises(InvalidRequest):
        s.sign_off(rad, study, instance, decision="overridden", label=result.predicted_class)
    signed = s.sign_off(rad, study, instance, decision="overridden", label=other,
                        comment="Mrs Example looks well")
    assert s.latest_result(rad, study, instance).signoff == signed
    db = sqlite3.connect(clinic.settings.home / "catalog.sqlite3")
    raw = db.execute("SELECT sealed_comment FROM clinical_signoffs").fetchone()[0]
    assert b"Example" not in raw
    db.execute("UPDATE clinical_signoffs SET final_label = ?", (result.predicted_class,))
    db.commit()
    db.close()
    with pytest.raises(IntegrityError):
        s.latest_result(rad, study, instance)
    assert s.vault.audit.query(action="integrity_failure")


@pytest.mark.parametrize("finding", ["no_finding", "not_assessable"])
def test_a_radiologist_may_sign_a_finding_that_is_none_of_the_models_classes(
        clinic, kit, tmp_path, finding):
    # a model without a normal class could otherwise only be overridden with a disease
    study = clinic.upload_png(kit, tmp_path, 7)
    s, rad = clinic.service, clinic.p["rad-n"]
    instance = s.start_analysis(rad, study).instance_ids[0]
    s.run_pending_jobs()

    signed = s.sign_off(rad, study, instance, decision="overridden", label=finding)

    assert (signed.decision, signed.final_label) == ("overridden", finding)
    report = s.report(rad, study, "fhir", instance_id=instance)
    diagnostic = json.loads(report.content)
    words = {"no_finding": "no finding of the model's classes",
             "not_assessable": "not assessable by this model"}[finding]
    assert diagnostic["status"] == "final"
    coding = diagnostic["conclusionCode"][0]["coding"][0]
    assert (coding["system"], coding["code"]) == ("urn:radvault:finding", finding)
    assert f"radiologist's finding {words}" in diagnostic["conclusion"]
    with pytest.raises(InvalidRequest, match="another class of the model, or one of"):
        s.sign_off(rad, study, instance, decision="overridden", label="anything_else")


def test_a_sign_off_never_replaces_another_or_lands_on_a_superseded_analysis(
        clinic, kit, tmp_path):
    # a user test: a second radiologist's sign-off silently replaced the first, a stale
    # page signed an older analysis, and a double click stored two sign-offs
    study = clinic.upload_png(kit, tmp_path, 8)
    s, rad = clinic.service, clinic.p["rad-n"]
    instance = s.start_analysis(rad, study).instance_ids[0]
    s.run_pending_jobs()
    first = s.latest_result(rad, study, instance)
    signed = s.sign_off(rad, study, instance, decision="overridden", label="not_assessable",
                        result_id=first.result_id)
    again = s.sign_off(rad, study, instance, decision="overridden", label="not_assessable",
                       result_id=first.result_id)  # the same form sent twice
    assert again.signoff_id == signed.signoff_id
    repeats = [e.details for e in s.vault.audit.query(action="report.sign", limit=5)
               if e.details.get("repeated")]
    assert repeats == [{"signoff_id": signed.signoff_id, "decision": "overridden",
                        "comment": False, "repeated": True}]  # stored once, audited twice
    spaced = s.sign_off(rad, study, instance, decision="overridden", label="not_assessable",
                        comment="  ", result_id=first.result_id)  # spaces only: none
    assert spaced.signoff_id == signed.signoff_id  # the page strips them: the same sign-off

    with pytest.raises(SignOffConflict, match=r"signed off by rad-n .* amend it"):
        s.sign_off(rad, study, instance, decision="accepted", result_id=first.result_id)
    with pytest.raises(SignOffConflict, match="signed off by rad-n"):  # not the current one
        s.sign_off(rad, study, instance, decision="accepted", amends="0" * 32,
                   result_id=first.result_id)
    amended = s.sign_off(rad, study, instance, decision="accepted", amends=signed.signoff_id,
                         result_id=first.result_id)
    with pytest.raises(SignOffConflict, match="signed off by rad-n"):  # a stale amendment
        s.sign_off(rad, study, instance, decision="overridden", label="no_finding",
                   amends=signed.signoff_id, result_id=first.result_id)
    report = json.loads(s.report(rad, study, "fhir", instance_id=instance).content)
    assert report["status"] == "amended"
    assert {o["status"] for o in report["contained"] if o["resourceType"] == "Observation"} == {
        "final"}
    assert "(amends the sign-off by rad-n): prediction accepted" in report["conclusion"]
    assert s.latest_result(rad, study, instance).signoff == amended

    s._analyser("rad-n").analyse_instance(instance)  # analysed again: a newer result
    with pytest.raises(SignOffConflict, match="a newer analysis of this image exists"):
        s.sign_off(rad, study, instance, decision="accepted", result_id=first.result_id)
    refused = [e.details["reason"] for e in s.vault.audit.query(action="report.sign", limit=20)
               if e.outcome == "refused"]
    assert sorted(refused) == ["already signed"] * 3 + ["superseded"]


def test_two_radiologists_signing_at_once_cannot_both_win(clinic, kit, tmp_path,
                                                          run_at_once):
    study = clinic.upload_png(kit, tmp_path, 9)
    s, rad = clinic.service, clinic.p["rad-n"]
    instance = s.start_analysis(rad, study).instance_ids[0]
    s.run_pending_jobs()
    labels = ["no_finding", "not_assessable"]

    errors = run_at_once(2, lambda k: s.sign_off(rad, study, instance, decision="overridden",
                                                 label=labels[k]))

    assert len(errors) == 1 and isinstance(errors[0], SignOffConflict)
    signoffs = [e for e in s.vault.audit.query(action="report.sign", limit=10)
                if e.outcome == "ok"]
    assert len(signoffs) == 1  # the other was refused, whichever came second


def test_reidentification_seals_the_reason_and_audits_its_length(clinic, kit, tmp_path):
    data = kit.ct_small().read_bytes()
    s = clinic.service
    study = s.upload(clinic.p["tech-n"], data, "CT_small.dcm").study_id
    who = s.reidentify(clinic.p["phys-n"], study, REASON)
    assert who.patient_name == "CompressedSamples^CT1"
    entry = s.vault.audit.query(action="reidentify", limit=1)[0]
    assert entry.details["reason_length"] == len(REASON) and entry.actor == "phys-n"
    db = sqlite3.connect(clinic.settings.home / "catalog.sqlite3")
    rows = db.execute("SELECT requested_by, sealed_reason FROM clinical_reidentifications")
    (by, sealed), = rows.fetchall()
    db.close()
    assert by == "phys-n" and REASON.encode() not in sealed
    png = clinic.upload_png(kit, tmp_path, 6)
    with pytest.raises(ObjectNotFound):
        s.reidentify(clinic.p["phys-n"], png, REASON)  # PNG uploads carry no identity


def test_tokens_survive_a_restart_of_the_service(clinic, kit):
    pair = clinic.service.login("rad-n", PASSWORD)
    key = token_signing_key(clinic.vault).public_key().public_bytes_raw()
    clinic.vault.close()
    clinic.vault = Vault.open(clinic.settings, kit.PASSPHRASE)
    assert token_signing_key(clinic.vault).public_key().public_bytes_raw() == key
    restarted = clinic.build()
    assert restarted.authenticate(pair.access_token).username == "rad-n"


def test_malformed_ids_and_parameters_are_refused(clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 7)
    s, rad = clinic.service, clinic.p["rad-n"]
    mark = clinic.mark()
    with pytest.raises(ObjectNotFound):
        s.study(rad, "../../etc/passwd")
    assert clinic.denied(mark)[0].details["reason"] == "malformed study id"
    instance = s.study(rad, study).instances[0].instance.instance_id
    with pytest.raises(InvalidRequest):
        s.render_image(rad, study, instance, frame=5)
    with pytest.raises(InvalidRequest):
        s.render_image(rad, study, instance, window_center=40.0)
    png = s.render_image(rad, study, instance, max_size=64)
    assert png.startswith(b"\x89PNG")


def test_one_tampered_instance_fails_the_job_after_the_others_are_stored(clinic, tmp_path):
    from pydicom.uid import generate_uid

    s, rad = clinic.service, clinic.p["rad-n"]
    ct = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    study = None
    for n in range(2):
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ct.save_as(tmp_path / f"ct{n}.dcm")
        study = s.upload(clinic.p["tech-n"], (tmp_path / f"ct{n}.dcm").read_bytes(),
                         f"ct{n}.dcm").study_id
    good, bad = (i.instance_id for i in s.vault.catalog.instances_of_study(study))
    victim = next(o for o in s.vault.catalog.objects_of_instance(bad) if o.kind == "model_input")
    blob = s.vault.blobs.path_of(victim.blob_key)
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0x01
    blob.write_bytes(bytes(data))

    job = s.start_analysis(rad, study)
    s.run_pending_jobs()
    failed = s.job(rad, job.job_id)
    assert failed.status == "failed" and failed.error == "IntegrityError"
    assert len(s.results(rad, study, good)) == 1  # analysed and kept
    assert s.results(rad, study, bad) == []


def trail_text(vault: Vault) -> str:
    """Everything the audit trail holds: the catalog table and the audit.log file copy."""
    with vault.catalog.engine.connect() as conn:
        rows = conn.execute(text("SELECT actor, object_ids, details FROM audit_entries")).all()
    return repr(rows) + vault.paths.audit_file.read_text(encoding="utf-8")


def test_ids_the_catalog_lacks_are_refused_alike_and_audited_only_as_digests(clinic, kit,
                                                                            tmp_path):
    study = clinic.upload_png(kit, tmp_path, 8)
    s, v, p = clinic.service, clinic.vault, clinic.p
    mark = clinic.mark()
    with pytest.raises(AccessDenied) as known:
        s.study(p["rad-s"], study)
    with pytest.raises(AccessDenied) as unknown:
        s.study(p["rad-s"], "MRN55512345")
    with pytest.raises(AccessDenied):
        s.reidentify(p["phys-n"], "ACC77331", REASON)
    with pytest.raises(ObjectNotFound):
        s.job(p["rad-n"], "MRN55512346")
    assert str(known.value) == str(unknown.value), "no answer tells whether a study exists"
    kept, mrn, acc, job = clinic.denied(mark)[::-1]
    assert kept.object_ids == (study, "site:north")
    assert mrn.object_ids == () and mrn.details["unknown_id_hmac"] == v.audit_digest(
        "MRN55512345")
    assert acc.object_ids == () and acc.details["reason"] == "no grant for this study"
    assert job.object_ids == () and job.details == {
        "action": "view_result", "role": "radiologist", "reason": "unknown job",
        "unknown_id_hmac": v.audit_digest("MRN55512346")}
    assert v.audit_digest("MRN55512345") != hashlib.sha256(b"MRN55512345").hexdigest()[:16]
    text = trail_text(v)
    assert all(typed not in text for typed in ("MRN55512345", "ACC77331", "MRN55512346"))


def test_malformed_ids_are_audited_under_a_keyed_digest(clinic):
    mark = clinic.mark()
    with pytest.raises(ObjectNotFound):
        clinic.service.study(clinic.p["rad-n"], "MRN 555/12345")
    (refusal,) = clinic.denied(mark)
    assert refusal.details["id_hmac"] == clinic.vault.audit_digest("MRN 555/12345")
    assert "id_sha256" not in refusal.details
    assert "555/12345" not in trail_text(clinic.vault)


def test_an_unknown_login_name_is_audited_under_the_vaults_keyed_digest(clinic, kit):
    for service in (clinic.service, clinic.build()):
        with pytest.raises(AuthenticationFailed):
            service.login("Summer2024!Quib", "x")
    first, again = (e.details for e in clinic.vault.audit.query(action="login_failed",
                                                                 limit=10))
    assert first == again == {"reason": "unknown user",
                              "username_hmac": clinic.vault.audit_digest("Summer2024!Quib")}
    assert first["username_hmac"] != hashlib.sha256(b"Summer2024!Quib").hexdigest()[:16]
    clinic.vault.close()
    clinic.vault = Vault.open(clinic.settings, kit.PASSPHRASE)
    assert clinic.vault.audit_digest("Summer2024!Quib") == first["username_hmac"]
    assert "Summer2024!Quib" not in trail_text(clinic.vault)


def test_a_study_is_granted_by_id_only_once_the_catalog_holds_it(clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 9)
    s, op = clinic.service, clinic.operator
    mark = clinic.mark()
    with pytest.raises(ObjectNotFound, match="catalog"):
        s.grant(op, "rad-s", study_id="ACC77331")
    assert [g.object_id for g in s.grants(op, "rad-s")] == ["site:south"]
    assert clinic.vault.audit.tail(1)[-1].seq == mark  # nothing stored, nothing audited
    assert s.grant(op, "rad-s", study_id=study).study_id == study
    # A grant by id made before the check (or whose study is gone) is still withdrawn,
    # and the trail names that id only by its digest.
    s.accounts.grant("cli:legacy", "rad-s", study_id="ACC77332")
    s.revoke_grant(op, "rad-s", study_id="ACC77332")
    s.revoke_grant(op, "rad-s", study_id=study)
    assert [g.object_id for g in s.grants(op, "rad-s")] == ["site:south"]
    legacy, known = clinic.vault.audit.query(action="revoke", limit=2)[::-1]
    assert legacy.object_ids == () and legacy.details == {
        "user": "rad-s", "unknown_id_hmac": clinic.vault.audit_digest("ACC77332")}
    assert known.object_ids == (study,)


def test_lead_image_is_the_first_flagged_else_the_newest():
    from datetime import UTC, datetime, timedelta

    from radvault.pipeline.clinical import lead_image

    t0 = datetime(2026, 11, 29, tzinfo=UTC)
    rows = [("a", False, t0), ("b", True, t0), ("c", True, t0 + timedelta(1)),
            ("d", False, t0 + timedelta(2))]

    def lead(items):
        found = lead_image(items, refer=lambda r: r[1], created=lambda r: r[2])
        return found[0] if found else None

    assert lead(rows) == "b"  # flagged first, in the study's order, however new
    assert lead([r for r in rows if not r[1]]) == "d"  # nothing flagged: the newest
    assert lead([("x", False, t0), ("y", False, t0)]) == "y"  # equal times: the later row
    assert lead([]) is None


def test_the_study_page_worklist_and_report_lead_with_the_same_image(clinic, tmp_path):
    """Two CT images of one study, both referred (the tiny model knows only DX): the
    first in the study's order leads, though the second was analysed later."""
    s, tech, rad = clinic.service, clinic.p["tech-n"], clinic.p["rad-n"]
    src = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" /
                          "CT_small.dcm")
    ids = []
    for n in (1, 2):
        ds = src.copy()
        ds.SOPInstanceUID = f"{src.SOPInstanceUID}.{n}"
        ds.InstanceNumber = n
        path = tmp_path / f"ct{n}.dcm"
        ds.save_as(path)
        up = s.upload(tech, path.read_bytes(), path.name)
        ids.append((up.study_id, up.instance_id))
    study = ids[0][0]
    assert ids[1][0] == study
    order = [v.instance.instance_id for v in s.study(rad, study).instances]
    assert s.lead_instance(rad, study) is None  # nothing analysed yet
    for instance in order:  # the second image is analysed last: the newest
        s._analyser("rad-n").analyse_instance(instance)
    assert all(s.latest_result(rad, study, i).refer for i in order)
    assert s.lead_instance(rad, study) == order[0]
    report = s.report(rad, study, "fhir").content.decode()
    assert order[0] in report and order[1] not in report


def test_analyse_again_after_the_result_seen_runs_once_more_and_a_double_click_once(
        clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 12)
    s, rad = clinic.service, clinic.p["rad-n"]
    first = s.start_analysis(rad, study)
    s.run_pending_jobs()
    instance = first.instance_ids[0]
    seen = s.latest_result(rad, study, instance).result_id
    assert s.start_analysis(rad, study).job_id == first.job_id  # the same request: same job
    again = s.start_analysis(rad, study, after=seen)  # "Analyse again" on the page
    assert again.job_id != first.job_id
    assert s.start_analysis(rad, study, after=seen).job_id == again.job_id  # double click
    s.run_pending_jobs()
    assert len(s.results(rad, study, instance)) == 2
    with pytest.raises(InvalidRequest, match="after"):
        s.start_analysis(rad, study, after="../x y")


def test_a_study_relabelled_there_and_back_is_analysed_again_not_given_its_old_job(
        clinic, kit, tmp_path):
    study = clinic.upload_png(kit, tmp_path, 13)  # recorded as DX, no body part
    s, rad = clinic.service, clinic.p["rad-n"]
    first = s.start_analysis(rad, study)
    s.run_pending_jobs()
    s.relabel_study(rad, study, modality="CT", body_part=None)
    second = s.start_analysis(rad, study)  # the record changed: a new job
    assert second.job_id != first.job_id
    s.run_pending_jobs()
    s.relabel_study(rad, study, modality="DX", body_part=None)  # back to the first record
    third = s.start_analysis(rad, study)  # its newest result is CT's: analysed again
    assert third.job_id not in (first.job_id, second.job_id)
    s.run_pending_jobs()
    latest = s.latest_result(rad, study, first.instance_ids[0])
    assert latest.recorded_as == ("DX", "")
    with pytest.raises(InvalidRequest, match="already recorded as DX"):
        s.relabel_study(rad, study, modality="dx", body_part=None)


def test_a_shredded_study_is_refused_analysis_at_once_and_audited(clinic, kit, tmp_path):
    from radvault.errors import ObjectShredded
    from radvault.pipeline.maintenance import shred_study

    study = clinic.upload_png(kit, tmp_path, 14)
    s, rad = clinic.service, clinic.p["rad-n"]
    shred_study(s.vault, study, actor="admin")
    with pytest.raises(ObjectShredded):
        s.start_analysis(rad, study)
    assert s.run_pending_jobs() == 0  # nothing was queued
    refused = s.vault.audit.query(action="analysis.request", object_id=study)
    assert [(e.outcome, e.details["reason"]) for e in refused] == [("refused", "shredded")]
