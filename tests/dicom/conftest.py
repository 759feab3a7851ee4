"""Fixtures of the DICOM tests: a vault with a fast KDF, SCPs on free loopback ports, a PKI.

Every server is started on 127.0.0.1 with port 0 (the OS picks a free port)
and stopped after its test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dicomkit import PASSPHRASE, Pki, add_sites, make_pki

from radvault.config import load_settings
from radvault.dicom.nodes import DicomNode, NodeRegistry
from radvault.dicom.scp import DicomServer
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

#: The allow-list most tests use: two nodes on loopback, each for its own site.
NORTH = DicomNode("CT_NORTH", "127.0.0.1", "north")
SOUTH = DicomNode("MR_SOUTH", "127.0.0.1", "south")


@pytest.fixture
def vault_home(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def vault(vault_home: Path) -> Iterator[Vault]:
    settings = load_settings(env={}, home=vault_home)
    v = Vault.init(settings, PASSPHRASE, kdf=KdfParams.fast())
    add_sites(v, NORTH.site, SOUTH.site)  # the sites of the allow-list's nodes
    try:
        yield v
    finally:
        v.close()


@pytest.fixture
def nodes() -> NodeRegistry:
    return NodeRegistry([NORTH, SOUTH])


@pytest.fixture
def start_server(vault: Vault, nodes: NodeRegistry) -> Iterator[Callable[..., DicomServer]]:
    """Start a :class:`DicomServer` over ``vault`` (stopped after the test)."""
    started: list[DicomServer] = []

    def start(**kwargs: Any) -> DicomServer:
        kwargs.setdefault("port", 0)
        server = DicomServer(kwargs.pop("vault", vault), kwargs.pop("nodes", nodes), **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., DicomServer]) -> DicomServer:
    """A plain (no TLS) SCP with the default allow-list, AE title RADVAULT."""
    return start_server()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
