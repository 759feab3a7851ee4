"""Crash safety: ``kill -9`` during ingest, many times, never corrupts the vault.

A child process (forked from the test, so it starts in milliseconds with
everything imported) unlocks the vault and ingests a folder of images with
``Ingestor.ingest_paths`` (as ``radvault ingest`` does), writing each
instance id to a pipe as soon as it is reported stored. The
test kills it with SIGKILL at random moments, forks it again, and kills it
again; a last run finishes. Afterwards ``verify`` finds no problem (blobs
orphaned by a kill are notes, not problems) and every instance reported
before a kill opens.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from radvault.config import load_settings
from radvault.pipeline.ingest import Ingestor, IngestOutcome
from radvault.pipeline.maintenance import verify_vault
from radvault.pipeline.retrieve import open_image, open_model_input
from radvault.vault.vault import Vault

if TYPE_CHECKING:
    from conftest import Kit

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

N_IMAGES = 30
N_KILLS = 10


def _child(home: Path, inputs: Path, passphrase: str, out: int, *, forever: bool) -> None:
    """The ingest process: report each stored or duplicate instance id as it comes back.

    With ``forever`` it goes over the folder again and again (duplicates after the
    first pass) so that a kill always finds it at work, however fast the machine.
    """
    vault = Vault.open(load_settings(env={}, home=home), passphrase)
    os.write(out, b"ready\n")
    ingestor = Ingestor(vault, actor="crashtest")

    def report(outcome: IngestOutcome) -> None:
        line = (f"refused {outcome.name}" if outcome.status == "refused"
                else f"ingested {outcome.instance_id}")
        os.write(out, line.encode() + b"\n")  # one write per line: never half a line

    while True:  # ingest_paths: storing one image overlaps preparing the next, as in the CLI
        ingestor.ingest_paths(sorted(inputs.iterdir()), modality="CT", on_file=report)
        if not forever:
            break
    vault.close()
    os.write(out, b"done\n")


def _read_line(fd: int, buffer: bytearray, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b""
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _run_child(kit: Kit, home: Path, inputs: Path, kill_after: float | None
               ) -> tuple[list[str], bool]:
    """Fork the ingest process; SIGKILL it ``kill_after`` s after it is ready (None: let it end)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            _child(home, inputs, kit.PASSPHRASE, write_fd, forever=kill_after is not None)
        except BaseException:
            os.write(write_fd, ("error " + traceback.format_exc()).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    buffer = bytearray()
    try:
        first = _read_line(read_fd, buffer, 30)
        if first != b"ready":
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"ingest child did not start: {first!r} {bytes(buffer)[-2000:]!r}")
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)  # a zombie until waited for, so the pid is still ours
        _, status = os.waitpid(pid, 0)
        while chunk := os.read(read_fd, 65536):
            buffer.extend(chunk)
    finally:
        os.close(read_fd)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        killed = True
    else:
        killed = False
        assert os.WEXITSTATUS(status) == 0, bytes(buffer)[-3000:].decode(errors="replace")
    lines = bytes(buffer).decode().splitlines()
    assert not [line for line in lines if line.startswith(("refused", "error"))], lines
    ids = [line.split()[1] for line in lines if line.startswith("ingested ")]
    return ids, killed


def test_kill_9_during_ingest_leaves_a_clean_vault_and_every_reported_image_readable(
    kit: Kit, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    for i in range(N_IMAGES):
        kit.make_raster(inputs / f"img{i:02d}.png", seed=1000 + i, shape=(192, 256))
    settings = kit.new_settings(tmp_path / "home")
    kit.init_vault(settings).close()
    rng = random.Random(20260301)  # reproducible kill times

    before_kills: set[str] = set()  # ids a killed process reported
    for _ in range(N_KILLS):
        ids, killed = _run_child(kit, settings.home, inputs, rng.uniform(0.0, 0.6))
        assert killed
        before_kills.update(ids)
    final, _ = _run_child(kit, settings.home, inputs, None)  # a last run finishes the job

    assert len(before_kills) >= 3  # the kills came during ingests of new images too
    assert before_kills <= set(final)
    assert len(set(final)) == N_IMAGES
    with Vault.open(settings, kit.PASSPHRASE) as vault:
        report = verify_vault(vault, actor="tester")
        assert report.ok, report.problems
        assert all(n.startswith("blob ") or (n.startswith("audit: ") and
                                             "entries after the last signed checkpoint" in n)
                   for n in report.notes), report.notes
        assert vault.audit.verify().ok
        for instance_id in sorted(before_kills):
            open_image(vault, instance_id, actor="tester")
            open_model_input(vault, instance_id, actor="tester")
    assert kit.count_rows(settings.home, "instances") == N_IMAGES
    assert kit.count_rows(settings.home, "objects") == 2 * N_IMAGES
