"""The clinicians' web pages: server-rendered HTML over the clinical use cases.

Sign-in, a worklist, a study viewer with results and sign-off, report
downloads, an upload page, the audit trail and account administration, served
by the API's application under ``/web`` (:func:`install_web`, called by
:func:`radvault.api.create_app`). Like the API, the pages only authenticate,
call one use case of :class:`~radvault.pipeline.clinical.ClinicalService` and
render: authorisation and audit are the same. Sessions live on the server
(an opaque ``HttpOnly``, ``SameSite=Strict`` cookie) and every POST carries a
CSRF token. No CDN: styles and the one small script ship in the package.
"""

from radvault.web._session import WebSettings
from radvault.web.app import install_web
from radvault.web.uploads import UPLOAD_PATH

__all__ = ["UPLOAD_PATH", "WebSettings", "install_web"]
