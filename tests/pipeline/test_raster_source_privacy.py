"""A PNG's own text chunks never reach the vault: the stored source is stripped at ingest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from radvault.config import load_settings
from radvault.pipeline.ingest import Ingestor
from radvault.pipeline.retrieve import export_study, open_image
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault

PHI = "Doe^Jane MRN0042"


def test_a_png_text_chunk_is_neither_stored_nor_exported(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", PHI)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    assert PHI.encode() in buffer.getvalue()
    vault = Vault.init(load_settings(env={}, home=tmp_path / "vault"), "raster privacy pass",
                       kdf=KdfParams.fast())
    try:
        outcome = Ingestor(vault, actor="tech").ingest_bytes(buffer.getvalue(), "scan.png",
                                                            modality="DX", body_part="CHEST")
        assert outcome.ok
        image = open_image(vault, str(outcome.instance_id), actor="dr")
        assert np.array_equal(image.pixels[0], pixels)  # the pixels, bit for bit (one frame)
        files = export_study(vault, str(outcome.study_id), tmp_path / "out", actor="dr")
    finally:
        vault.close()
    exported = b"".join(f.path.read_bytes() for f in files)
    assert exported and PHI.encode() not in exported
