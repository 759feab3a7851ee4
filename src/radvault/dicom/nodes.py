"""The allow-list of DICOM nodes: which calling AE titles, from which hosts, for which site.

A modality or PACS may open an association only when its calling AE title is
on the list *and* the connection comes from the host recorded for it; each
node maps to one site, the way a user does, and sees and feeds only that
site's studies. The list lives in ``RADVAULT_HOME/dicom_nodes.toml``::

    [[nodes]]
    ae_title = "CT_NORTH_1"
    host = "10.1.2.3"        # an IP address or a host name
    site = "north"
    port = 104               # optional: where the node itself listens (for pull)

Nodes are checked when built (a value that exists is valid), and the file is
rewritten atomically with mode 0600.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from radvault.config import Settings
from radvault.errors import ConfigurationError

__all__ = ["NODES_FILE", "DicomNode", "NodeRegistry", "check_ae_title", "nodes_path"]

log = logging.getLogger(__name__)

NODES_FILE = "dicom_nodes.toml"
"""The allow-list's file name inside ``RADVAULT_HOME``."""

# PS3.5 6.2: AE is 16 characters of the default repertoire without backslash or
# control characters; leading and trailing spaces are not significant.
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # as the catalog's ids
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,253}")


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped if it is a valid AE title.

    Raises
    ------
    ConfigurationError
        When it is empty, longer than 16 characters, or has a backslash or a
        control character.
    """
    if not isinstance(value, str):
        raise ConfigurationError("an AE title must be text")
    stripped = value.strip()
    if not stripped or _AE.fullmatch(stripped) is None:
        raise ConfigurationError(
            "an AE title must be 1-16 printable ASCII characters without a backslash"
        )
    return stripped


@dataclass(frozen=True)
class DicomNode:
    """One allowed DICOM peer.

    Parameters
    ----------
    ae_title : str
        The peer's AE title (its *calling* AE title when it connects to us).
    host : str
        The IP address or host name it connects from (and listens on, for pull).
    site : str
        The site its studies belong to and the only site it may query.
    port : int, optional
        Where the peer listens, when RadVault connects to it (``radvault pull``).

    Raises
    ------
    ConfigurationError
        When a field is malformed (checked when built).
    """

    ae_title: str
    host: str
    site: str
    port: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title))
        if not isinstance(self.host, str) or _HOST.fullmatch(self.host) is None:
            raise ConfigurationError(f"node {self.ae_title}: host must be an address or a name")
        if not isinstance(self.site, str) or _SITE.fullmatch(self.site) is None:
            raise ConfigurationError(
                f"node {self.ae_title}: site must match {_SITE.pattern!r}"
            )
        if self.port is not None and (
            isinstance(self.port, bool) or not isinstance(self.port, int)
            or not 1 <= self.port <= 65535
        ):
            raise ConfigurationError(f"node {self.ae_title}: port must be within 1..65535")

    def addresses(self) -> frozenset[str]:
        """The IP addresses the node's host stands for (a literal address, or a name resolved).

        A name that does not resolve stands for no address, so its node cannot connect.
        """
        try:
            return frozenset({str(ipaddress.ip_address(self.host))})
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(self.host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            log.warning("DICOM node %s: its host name does not resolve", self.ae_title)
            return frozenset()
        return frozenset(str(ipaddress.ip_address(info[4][0])) for info in infos)

    def to_toml(self) -> str:
        """The node as one ``[[nodes]]`` table of TOML."""
        lines = ["[[nodes]]", f"ae_title = {json.dumps(self.ae_title)}",
                 f"host = {json.dumps(self.host)}", f"site = {json.dumps(self.site)}"]
        if self.port is not None:
            lines.append(f"port = {self.port}")
        return "\n".join(lines) + "\n"


def _normalise_ip(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class NodeRegistry:
    """The allow-list: finds the node a calling AE title and peer address stand for.

    Parameters
    ----------
    nodes : iterable of DicomNode
        The allowed nodes; AE titles must be unique.

    Raises
    ------
    ConfigurationError
        When two nodes share an AE title.
    """

    def __init__(self, nodes: Iterable[DicomNode] = ()) -> None:
        self._nodes: dict[str, DicomNode] = {}
        for node in nodes:
            if node.ae_title in self._nodes:
                raise ConfigurationError(f"DICOM node {node.ae_title} is listed twice")
            self._nodes[node.ae_title] = node
        self._addresses = {ae: node.addresses() for ae, node in self._nodes.items()}

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, path: Path) -> NodeRegistry:
        """Read the allow-list from ``path``; a missing file is an empty list.

        Raises
        ------
        ConfigurationError
            When the file is not valid TOML or a node is malformed.
        """
        if not path.is_file():
            return cls()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{path}: invalid TOML ({exc})") from None
        entries = data.get("nodes", [])
        unknown = set(data) - {"nodes"}
        if unknown or not isinstance(entries, list):
            raise ConfigurationError(f"{path}: expected only [[nodes]] tables")
        nodes = []
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) - {"ae_title", "host", "site", "port"}:
                raise ConfigurationError(
                    f"{path}: a node has only ae_title, host, site and port"
                )
            try:
                nodes.append(DicomNode(**entry))
            except TypeError:
                raise ConfigurationError(
                    f"{path}: every node needs ae_title, host and site"
                ) from None
        return cls(nodes)

    @classmethod
    def from_settings(cls, settings: Settings) -> NodeRegistry:
        """Read ``RADVAULT_HOME/dicom_nodes.toml``.

        Raises
        ------
        ConfigurationError
            When the file is not valid TOML or a node is malformed.
        """
        return cls.load(nodes_path(settings))

    def save(self, path: Path) -> None:
        """Write the allow-list to ``path`` atomically (mode 0600).

        Raises
        ------
        OSError
            When the file cannot be written.
        """
        text = "# RadVault DICOM allow-list (radvault dicom nodes ...)\n\n" + "\n".join(
            node.to_toml() for node in self
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)

    # ------------------------------------------------------------------ look-ups

    def __iter__(self) -> Iterator[DicomNode]:
        return iter(sorted(self._nodes.values(), key=lambda n: n.ae_title))

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, ae_title: str) -> DicomNode | None:
        """The node with this AE title, whatever host it connects from."""
        return self._nodes.get(ae_title.strip())

    def match(self, ae_title: str, address: str) -> DicomNode | None:
        """The node allowed to call with ``ae_title`` from ``address``, or ``None``."""
        node = self._nodes.get(ae_title.strip())
        if node is None:
            return None
        return node if _normalise_ip(address) in self._addresses[node.ae_title] else None

    def with_node(self, node: DicomNode) -> NodeRegistry:
        """A new registry with ``node`` added (or replacing the node of the same AE title)."""
        others = [n for n in self if n.ae_title != node.ae_title]
        return NodeRegistry([*others, node])

    def without(self, ae_title: str) -> NodeRegistry:
        """A new registry without the node of ``ae_title``.

        Raises
        ------
        ConfigurationError
            When no node has this AE title.
        """
        key = check_ae_title(ae_title)
        if key not in self._nodes:
            raise ConfigurationError(f"no DICOM node {key} on the allow-list")
        return NodeRegistry(n for n in self if n.ae_title != key)


def nodes_path(settings: Settings) -> Path:
    """Where the allow-list lives: ``RADVAULT_HOME/dicom_nodes.toml``."""
    return settings.home / NODES_FILE
