"""The HTTP face of RadVault (FastAPI): authenticate, call one use case, render.

No business logic and no policy here: :mod:`radvault.pipeline.clinical`
decides. :func:`create_app` wires the routers (one per resource), the one
error-mapping module and the security middleware.
"""

from radvault.api.main import ApiSettings, create_app
from radvault.api.tls import make_self_signed

__all__ = ["ApiSettings", "create_app", "make_self_signed"]
