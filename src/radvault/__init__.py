"""RadVault: secure, privacy-aware medical imaging analytics.

Images come in (DICOM, PNG, JPEG), are de-identified, preprocessed, sealed with
AES-256-GCM, stored, verified on every read and audited; a CNN classifies them in
memory only. The layers are subpackages: ``imaging``, ``vault``, ``analysis``,
``pipeline`` (use cases), ``jobs``, and the faces (``cli``).
"""

from radvault.config import Settings, load_settings
from radvault.errors import RadVaultError

__all__ = ["RadVaultError", "Settings", "__version__", "load_settings"]

__version__ = "0.1.0"
