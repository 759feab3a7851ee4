"""The allow-list: nodes check themselves, match by AE title *and* host, and round-trip via TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from radvault.config import load_settings
from radvault.dicom.nodes import NODES_FILE, DicomNode, NodeRegistry, check_ae_title, nodes_path
from radvault.errors import ConfigurationError


@pytest.mark.parametrize("bad", ["", "   ", "A" * 17, "BACK\\SLASH", "TAB\tAE", "É"])
def test_malformed_ae_titles_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        check_ae_title(bad)


def test_ae_titles_lose_insignificant_spaces() -> None:
    assert check_ae_title("  CT_1 ") == "CT_1"
    assert DicomNode(" CT_1", "127.0.0.1", "north").ae_title == "CT_1"


@pytest.mark.parametrize("kwargs", [
    {"host": "bad host!"}, {"site": "no spaces"}, {"site": ""}, {"port": 0}, {"port": 70000},
])
def test_malformed_nodes_are_refused(kwargs: dict) -> None:
    fields = {"ae_title": "CT_1", "host": "127.0.0.1", "site": "north", **kwargs}
    with pytest.raises(ConfigurationError):
        DicomNode(**fields)


def test_a_node_matches_only_from_its_own_host() -> None:
    registry = NodeRegistry([DicomNode("CT_1", "10.0.0.5", "north"),
                             DicomNode("LOCAL", "localhost", "south")])
    assert registry.match("CT_1", "10.0.0.5").site == "north"
    assert registry.match("CT_1 ", "::ffff:10.0.0.5") is not None  # IPv4-mapped IPv6
    assert registry.match("CT_1", "10.0.0.6") is None
    assert registry.match("MR_1", "10.0.0.5") is None
    assert registry.match("LOCAL", "127.0.0.1") is not None  # a host name is resolved


def test_an_unresolvable_host_name_matches_nothing() -> None:
    registry = NodeRegistry([DicomNode("GHOST", "no-such-host.invalid", "north")])
    assert registry.match("GHOST", "127.0.0.1") is None


def test_duplicate_ae_titles_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="twice"):
        NodeRegistry([DicomNode("A", "127.0.0.1", "x"), DicomNode("A", "127.0.0.2", "y")])


def test_the_allow_list_round_trips_through_its_file(tmp_path: Path) -> None:
    settings = load_settings(env={}, home=tmp_path)
    path = nodes_path(settings)
    assert path == tmp_path / NODES_FILE
    assert len(NodeRegistry.from_settings(settings)) == 0  # no file: nobody is allowed
    registry = NodeRegistry().with_node(DicomNode("CT_1", "10.0.0.5", "north", 104))
    registry = registry.with_node(DicomNode("MR_1", "10.0.0.6", "south"))
    registry.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = NodeRegistry.from_settings(settings)
    assert list(loaded) == list(registry)
    assert loaded.get("CT_1").port == 104
    changed = loaded.with_node(DicomNode("CT_1", "10.0.0.9", "east"))
    assert changed.get("CT_1").site == "east" and len(changed) == 2
    assert [n.ae_title for n in changed.without("MR_1")] == ["CT_1"]
    with pytest.raises(ConfigurationError, match="no DICOM node"):
        changed.without("NOPE")


@pytest.mark.parametrize("text", [
    "[[nodes]]\nae_title = 'A'\n",  # missing fields
    "[[nodes]]\nae_title = 'A'\nhost = '1.2.3.4'\nsite = 's'\nextra = 1\n",
    "[server]\nport = 1\n",
    "not toml at all [",
])
def test_malformed_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / NODES_FILE
    path.write_text(text)
    with pytest.raises(ConfigurationError):
        NodeRegistry.load(path)
