"""Wiring of the web pages into the API's application: routers, static files, state."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from radvault.web import admin, audit, auth, studies, uploads
from radvault.web._core import STATIC_PATH, WebState
from radvault.web._session import WebSettings

__all__ = ["STATIC_DIR", "install_web"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


def install_web(app: FastAPI, settings: WebSettings | None = None) -> frozenset[str]:
    """Add the clinicians' pages (under ``/web``) and their static files to ``app``.

    The app must carry the clinical service on ``app.state.service`` and the
    upload cap on ``app.state.max_upload_bytes`` (``create_app`` sets both).

    Parameters
    ----------
    app : FastAPI
        The API application.
    settings : WebSettings, optional
        Session and list settings.

    Returns
    -------
    frozenset of str
        Paths whose request bodies the pages cap themselves (the upload page):
        exempt them from the API's small body limit.

    Raises
    ------
    ConfigurationError
        If a setting is out of range.
    """
    app.state.web = WebState.build(settings or WebSettings())
    for module in (auth, studies, uploads, audit, admin):
        app.include_router(module.router)
    app.include_router(auth.root_router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="web-static")
    return frozenset({uploads.UPLOAD_PATH})
