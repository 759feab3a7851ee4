"""Shared report inputs: a four-class analysis, its model, a heatmap and a de-identified CT."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pydicom
import pytest
from report_samples import (
    CLASSES,
    CT_SMALL,
    PROBS,
    PSEUDONYM,
    REAL_BIRTH,
    REAL_ID,
    REAL_NAME,
    make_png,
)

from radvault.reports import (
    AnalysisSummary,
    Identity,
    ModelSummary,
    ReportInput,
    SignOff,
)


@pytest.fixture(scope="session")
def heatmap_png() -> bytes:
    return make_png()


@pytest.fixture
def analysis() -> AnalysisSummary:
    return AnalysisSummary(model_id="chest_xray-0123456789ab", task="chest_xray",
                           predicted_class="pneumonia", probability=0.62,
                           probabilities=dict(zip(CLASSES, PROBS, strict=True)), refer=True,
                           reasons=("low_confidence",), refer_threshold=0.80,
                           result_id="res-000042")


@pytest.fixture
def model() -> ModelSummary:
    return ModelSummary(model_id="chest_xray-0123456789ab", task="chest_xray", classes=CLASSES,
                        input_size=224, trained_on=(("DX", "CHEST"), ("CR", "CHEST")),
                        metrics={"accuracy": 0.912, "auc_macro": 0.973, "mcc": 0.8, "n": 480},
                        metrics_split="test", created="2026-01-05T10:00:00Z")


@pytest.fixture
def report(analysis: AnalysisSummary, model: ModelSummary, heatmap_png: bytes) -> ReportInput:
    return ReportInput(study_id="ST-000007", instance_ids=("IN-000011",),
                       patient_pseudonym=PSEUDONYM, site="North Site", modality="DX",
                       body_part="CHEST", analysis=analysis, model=model,
                       study_date=date(2019, 3, 14), heatmap_png=heatmap_png,
                       generated_at=datetime(2026, 2, 1, 9, 30, tzinfo=UTC))


@pytest.fixture
def accepted() -> SignOff:
    return SignOff(radiologist="dr_grey", decision="accepted",
                   signed_at=datetime(2026, 2, 2, 8, 0, tzinfo=UTC), comment="Agree.")


@pytest.fixture
def overridden() -> SignOff:
    return SignOff(radiologist="dr_grey", decision="overridden",
                   signed_at=datetime(2026, 2, 2, 8, 0, tzinfo=UTC),
                   comment="Consolidation <b>absent</b> & pattern fits covid",
                   radiologist_class="covid")


@pytest.fixture
def identity() -> Identity:
    return Identity(name=REAL_NAME, patient_id=REAL_ID, birth_date=REAL_BIRTH)


@pytest.fixture
def source_ds() -> pydicom.Dataset:
    """CT_small, de-identified the way RadVault's profile marks it."""
    ds = pydicom.dcmread(CT_SMALL)
    ds.PatientID = PSEUDONYM
    ds.PatientName = PSEUDONYM
    ds.PatientBirthDate = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "RadVault PS3.15 basic profile"
    return ds
