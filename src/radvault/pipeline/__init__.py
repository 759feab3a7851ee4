"""Use cases: ingest, retrieve, export, analyse (vault images and files), maintain, and
the clinical service.

The one layer that orchestrates imaging, vault and analysis, and the one place
that checks policy (:class:`ClinicalService`). Names are loaded on first use
(PEP 562) so that a command needing only ingest does not import the model runtime.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Analyser",
    "AnalysisResult",
    "ClinicalService",
    "FileAnalysis",
    "IngestOutcome",
    "Ingestor",
    "ServiceSettings",
    "VerifyReport",
    "analyse_file",
    "export_study",
    "open_image",
    "open_model_input",
    "operator_principal",
    "rotate_keys",
    "shred_study",
    "verify_vault",
]

_WHERE = {
    "AnalysisResult": "analyse",
    "Analyser": "analyse",
    "ClinicalService": "clinical",
    "FileAnalysis": "file_analysis",
    "IngestOutcome": "ingest",
    "Ingestor": "ingest",
    "ServiceSettings": "clinical",
    "VerifyReport": "maintenance",
    "analyse_file": "file_analysis",
    "export_study": "retrieve",
    "open_image": "retrieve",
    "open_model_input": "retrieve",
    "operator_principal": "clinical",
    "rotate_keys": "maintenance",
    "shred_study": "maintenance",
    "verify_vault": "maintenance",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
