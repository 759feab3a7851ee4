"""Analysing a vault instance: result and audit entry together, idempotent by result id."""

import io
from pathlib import Path

import pytest
from PIL import Image

from radvault.analysis.explain import heatmap_only_png
from radvault.analysis.inference import LoadedModel
from radvault.config import load_settings
from radvault.errors import IntegrityError, ObjectNotFound
from radvault.pipeline.analyse import FIRST_CHUNK, Analyser, _batched
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.maintenance import verify_vault
from radvault.pipeline.retrieve import open_image
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "src" / "radvault" / "samples" / "images" / (
    "chest_xray__pneumonia__person117_bacteria_553.jpeg")
pytestmark = pytest.mark.skipif(not (REPO / "models" / "radbench6").is_dir(),
                                reason="no shipped models in this checkout")


@pytest.fixture
def vault(tmp_path: Path):
    v = Vault.init(load_settings(env={}, home=tmp_path / "vault"), "analysis test passphrase",
                   kdf=KdfParams.fast())
    yield v
    v.close()


def test_a_result_is_stored_with_its_audit_entry_and_a_rerun_stores_nothing_new(
    vault: Vault,
) -> None:
    outcome = Ingestor(vault, actor="tech").ingest_file(SAMPLE, modality="DX", body_part="CHEST")
    analyser = Analyser.default(vault, actor="dr")
    first = analyser.analyse_instance(outcome.instance_id, result_id="job0001")
    again = analyser.analyse_instance(outcome.instance_id, result_id="job0001")
    assert again.result_id == first.result_id == "job0001"
    assert again.predicted_class == first.predicted_class
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert len(vault.catalog.results_of_instance(outcome.instance_id)) == 1
    entries = vault.audit.query(action="analyse")
    assert [e.object_ids[-1] for e in entries] == ["job0001"]
    assert verify_vault(vault).ok


def test_the_heatmap_is_a_png_computed_in_memory(vault: Vault) -> None:
    outcome = Ingestor(vault, actor="tech").ingest_file(SAMPLE, modality="DX", body_part="CHEST")
    analyser = Analyser.default(vault, actor="dr")
    png = analyser.heatmap_png(outcome.instance_id)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    over_image = analyser.heatmap_png(outcome.instance_id, under="image")
    assert not any(p.suffix == ".png" for p in vault.paths.home.rglob("*"))
    with (Image.open(io.BytesIO(png)) as small, Image.open(io.BytesIO(over_image)) as large,
          Image.open(SAMPLE) as source):
        assert small.size == (128, 128)  # the chest model's input
        assert large.size == (max(source.size),) * 2  # the image's own size
    with pytest.raises(ValueError, match="under must be"):
        analyser.heatmap_png(outcome.instance_id, under="pixels")  # type: ignore[arg-type]


def test_a_heatmap_over_nothing_holds_the_activation_map_and_nothing_of_the_image(
    vault: Vault,
) -> None:
    outcome = Ingestor(vault, actor="tech").ingest_file(SAMPLE, modality="DX", body_part="CHEST")
    analyser = Analyser.default(vault, actor="dr")
    alone = analyser.heatmap_png(outcome.instance_id, under="nothing")
    model = analyser.model_for("DX", "CHEST")
    array = model.preprocess(open_image(vault, outcome.instance_id, actor="dr"))
    # exactly the activation map's own picture: no pixel of the image is in it
    assert alone == heatmap_only_png(model.cam(array[None]), size=array.shape[-1])
    assert alone != analyser.heatmap_png(outcome.instance_id, under="model_input")
    reads = vault.audit.query(action="read")
    assert sorted(e.details.get("under") for e in reads if e.details.get("what") == "heatmap") == [
        "model_input", "nothing"]


HINTS = {"brain_mri": ("MR", "BRAIN"), "breast_us": ("US", "BREAST"),
         "chest_xray": ("DX", "CHEST")}


def _ingest_samples(vault: Vault) -> list[str]:
    ingestor = Ingestor(vault, actor="tech")
    ids = []
    for path in sorted(SAMPLE.parent.iterdir()):
        modality, body_part = HINTS[path.name.split("__")[0]]
        ids.append(ingestor.ingest_file(path, modality=modality, body_part=body_part).instance_id)
    return ids


def test_a_batch_gives_the_same_predictions_as_one_at_a_time_with_one_audit_entry_each(
    vault: Vault,
) -> None:
    ids = _ingest_samples(vault)
    analyser = Analyser.default(vault, actor="dr")
    seen: list[int] = []
    batch = analyser.analyse_many(ids, batch_size=2, progress=seen.append)
    assert batch.failures == []
    assert [r.instance_id for r in batch.results] == ids
    assert seen == [2, 2, 1]
    for result in batch.results:
        single = analyser.analyse_instance(result.instance_id)
        assert single.model_id == result.model_id
        assert single.probabilities == pytest.approx(result.probabilities, abs=1e-5)
    entries = vault.audit.query(action="analyse")
    assert len(entries) == 2 * len(ids)
    batch_entries = entries[len(ids):]  # newest first: the single runs came after
    assert {e.object_ids[-1] for e in batch_entries} == {r.result_id for r in batch.results}
    assert verify_vault(vault).ok


def test_a_tampered_or_unknown_instance_is_refused_and_the_rest_of_the_batch_is_stored(
    vault: Vault,
) -> None:
    ids = _ingest_samples(vault)
    victim = ids[1]
    model_input = next(o for o in vault.catalog.objects_of_instance(victim)
                       if o.kind == "model_input")
    blob = vault.blobs.path_of(model_input.blob_key)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    batch = Analyser.default(vault, actor="dr").analyse_many([*ids, "0" * 32])
    assert [r.instance_id for r in batch.results] == [i for i in ids if i != victim]
    assert [f[0] for f in batch.failures] == [victim, "0" * 32]
    assert isinstance(batch.failures[0][1], IntegrityError)
    assert isinstance(batch.failures[1][1], ObjectNotFound)
    assert vault.catalog.results_of_instance(victim) == []
    refusals = vault.audit.query(action="integrity_failure")
    assert any(model_input.object_id in e.object_ids for e in refusals)
    errors = [e for e in vault.audit.query(action="analyse") if e.outcome == "error"]
    assert [e.object_ids[-1] for e in errors] == [victim]


def test_every_opened_batch_is_wiped_when_inference_fails_midway(
    vault: Vault, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = _ingest_samples(vault)
    analyser = Analyser.default(vault, actor="dr")
    opened: list = []
    prepare = analyser._prepare_batches

    def recording(*args, **kwargs):
        out = prepare(*args, **kwargs)
        opened.extend(batch for _, batch in out[0])
        return out

    calls = 0
    predict = LoadedModel.predict

    def failing_predict(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("inference crashed")
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(analyser, "_prepare_batches", recording)
    monkeypatch.setattr(LoadedModel, "predict", failing_predict)
    with pytest.raises(RuntimeError, match="inference crashed"):
        # one model, so chunks of 2, 2 and 1 make one call each: the 2nd call fails
        # while the 3rd chunk is already open on the worker
        analyser.analyse_many(ids, batch_size=2, model_name="radbench6")
    assert len(opened) == 3
    assert all(not batch.any() for batch in opened)


def test_inputs_opened_before_an_unforeseen_error_in_a_chunk_are_wiped(
    vault: Vault, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = _ingest_samples(vault)
    analyser = Analyser.default(vault, actor="dr")
    opened: list = []
    prepare = analyser._prepare_object

    def failing_second(obj, model_name):
        if len(opened) == 1:
            raise AttributeError("a bug, not a refusal")
        prepared = prepare(obj, model_name)
        opened.append(prepared.array)
        return prepared

    monkeypatch.setattr(analyser, "_prepare_object", failing_second)
    with pytest.raises(AttributeError, match="a bug"):
        analyser.analyse_many(ids, batch_size=4)
    assert len(opened) == 1 and not opened[0].any()
    assert vault.catalog.results_of_instance(ids[0]) == []


def test_the_first_chunk_is_small_so_inference_starts_early() -> None:
    ids = [str(n) for n in range(75)]
    chunks = list(_batched(ids, 32, first=FIRST_CHUNK))
    assert [len(c) for c in chunks] == [FIRST_CHUNK, 32, 32, 75 - 64 - FIRST_CHUNK]
    assert [i for c in chunks for i in c] == ids
    assert [len(c) for c in _batched(ids[:5], 2, first=FIRST_CHUNK)] == [2, 2, 1]
    assert list(_batched([], 32, first=FIRST_CHUNK)) == []


def test_a_tampered_model_is_audited_as_an_integrity_failure(vault: Vault, tmp_path: Path) -> None:
    import json
    import shutil

    from radvault.errors import ModelIntegrityError

    models = tmp_path / "models"
    shutil.copytree(REPO / "models" / "chest_xray", models / "chest_xray")
    shutil.copytree(REPO / "models" / "keys", models / "keys")
    card = models / "chest_xray" / "model_card.json"
    changed = json.loads(card.read_text())
    changed["temperature"] *= 2  # a sharper confidence than the model earned
    card.write_text(json.dumps(changed))
    outcome = Ingestor(vault, actor="tech").ingest_file(SAMPLE, modality="DX", body_part="CHEST")
    analyser = Analyser.default(vault, actor="dr", models_dir=models)
    with pytest.raises(ModelIntegrityError):
        analyser.analyse_instance(outcome.instance_id, model_name="chest_xray")
    (refused,) = vault.audit.query(action="integrity_failure")
    assert refused.outcome == "refused" and refused.actor == "dr"
    assert refused.details == {"error": "model failed verification",
                               "reason": "model_card.json does not match its signature",
                               "model_folder": "chest_xray"}
    assert vault.catalog.results_of_instance(outcome.instance_id) == []


BRAIN = sorted(SAMPLE.parent.glob("brain_mri__*"))


def test_an_image_without_a_body_part_is_referred_as_unknown_and_one_with_it_is_not(
    vault: Vault, tmp_path: Path,
) -> None:
    # an MR image with no Body Part Examined, or one the vocabulary does not know, has no
    # specialist: radbench6 answers, and must refer it whatever its confidence
    import pydicom

    mr = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm")
    mr.BodyPartExamined = "SMITH"  # a header value, not a hint: normalised to unknown
    mr.save_as(tmp_path / "mr.dcm")
    ingestor = Ingestor(vault, actor="tech")
    unknown = ingestor.ingest_file(BRAIN[0], modality="MR").instance_id
    not_a_term = ingestor.ingest_file(tmp_path / "mr.dcm").instance_id
    known = ingestor.ingest_file(SAMPLE, modality="DX", body_part="CHEST").instance_id
    assert vault.catalog.get_study(vault.catalog.get_instance(unknown).study_id).body_part in (
        None, "")
    analyser = Analyser.default(vault, actor="dr")
    single = analyser.analyse_instance(unknown)
    batch = analyser.analyse_many([unknown, not_a_term, known], model_name="radbench6")
    assert batch.failures == []
    for result in (single, *batch.results[:2]):
        assert result.model_id.startswith("radbench6")
        assert result.refer and "body_part_unknown" in result.reasons
        assert "body_part_not_trained" not in result.reasons
    assert "body_part_unknown" not in batch.results[2].reasons  # DX CHEST: trained on
    stored = vault.catalog.results_of_instance(unknown)
    assert all("body_part_unknown" in r.payload["reasons"] and r.payload["refer"]
               for r in stored)


def test_a_body_part_the_model_knows_is_not_referred_for_its_body_part(vault: Vault) -> None:
    ingestor = Ingestor(vault, actor="tech")
    ids = [ingestor.ingest_file(p, modality="MR", body_part="BRAIN").instance_id for p in BRAIN]
    analyser = Analyser.default(vault, actor="dr")
    for result in (*analyser.analyse_many(ids, model_name="radbench6").results,
                   analyser.analyse_instance(ids[0])):
        assert not {"body_part_unknown", "body_part_not_trained",
                    "modality_not_trained"} & set(result.reasons)


def test_a_dicom_image_without_body_part_examined_is_referred(vault: Vault) -> None:
    import pydicom

    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    assert "BodyPartExamined" not in pydicom.dcmread(ct, stop_before_pixels=True)
    outcome = Ingestor(vault, actor="tech").ingest_file(ct)
    result = Analyser.default(vault, actor="dr").analyse_instance(outcome.instance_id)
    assert result.model_id.startswith("radbench6")  # no specialist for CT without a part
    assert result.refer and "body_part_unknown" in result.reasons

