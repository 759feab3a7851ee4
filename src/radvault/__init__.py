"""RadVault: secure, privacy-aware medical imaging analytics.

Images come in (DICOM, PNG, JPEG), are de-identified, preprocessed, sealed with
AES-256-GCM, stored, verified on every read and audited; a CNN classifies them in
memory only. The layers are subpackages: ``imaging``, ``vault``, ``analysis``,
``pipeline`` (use cases), ``jobs``, and the faces (``cli``).
"""

import os
import sys
import warnings

# ONNX Runtime's official Linux wheels (1.2x on) collect telemetry: at import they write a
# persistent device id under ~/.cache/Microsoft and a session file in $TMPDIR, and upload a
# process event to Microsoft's collector. A clinical host running RadVault sends nothing
# off the machine, so the opt-out is set before anything of ours can import onnxruntime
# (it is read once, at the library's initialisation). See docs/models.md, "Serving".
if "onnxruntime" in sys.modules and os.environ.get("ORT_DISABLE_TELEMETRY") != "1":
    warnings.warn("onnxruntime was imported before radvault, so its telemetry is on in this "
                  "process: set ORT_DISABLE_TELEMETRY=1 before importing it", RuntimeWarning,
                  stacklevel=2)
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

from radvault.config import Settings, load_settings
from radvault.errors import RadVaultError

__all__ = ["RadVaultError", "Settings", "__version__", "load_settings"]

__version__ = "0.1.0"
