"""DICOM network services: the SCP (C-ECHO, C-STORE, C-FIND), DICOM TLS, and PACS import.

A face of RadVault: it parses DICOM, checks the calling node against the
allow-list, and calls the ingest use case; no business logic lives here.
"""

from radvault.dicom._storage import (
    STATUS_BY_ERROR,
    STORAGE_SOP_CLASSES,
    accepted_transfer_syntaxes,
)
from radvault.dicom.nodes import DicomNode, NodeRegistry, nodes_path
from radvault.dicom.pull import PullError, PullReport, pull_dicomweb, pull_dimse
from radvault.dicom.scp import DicomServer
from radvault.dicom.tls import TlsConfig, client_context, server_context

__all__ = [
    "STATUS_BY_ERROR",
    "STORAGE_SOP_CLASSES",
    "DicomNode",
    "DicomServer",
    "NodeRegistry",
    "PullError",
    "PullReport",
    "TlsConfig",
    "accepted_transfer_syntaxes",
    "client_context",
    "nodes_path",
    "pull_dicomweb",
    "pull_dimse",
    "server_context",
]
