"""What every page shares: the session's token renewal, sign-in redirects, error pages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from webkit import PASSWORD, World

from radvault.web._core import safe_next
from radvault.web._session import WebSession


@pytest.fixture
def client(world: World) -> Iterator[httpx.Client]:
    """A plain HTTP client signed in as rad-n through the sign-in form."""
    with httpx.Client(base_url=world.base_url, timeout=30) as c:
        form = c.get("/web/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert token is not None
        r = c.post("/web/login", data={"username": "rad-n", "password": PASSWORD,
                                       "login_token": token.group(1)})
        assert r.status_code == 303 and r.headers["location"] == "/web/"
        yield c


def session_of(world: World, client: httpx.Client) -> WebSession:
    sessions = world.server.server.config.app.state.web.sessions
    session = sessions.get(client.cookies["rv_session"])
    assert session is not None
    return session


def test_an_expiring_access_token_is_renewed_once_for_parallel_requests(
        world: World, client: httpx.Client) -> None:
    session = session_of(world, client)
    old_access, old_refresh = session.access_token, session.refresh_token
    session.access_expires = 0  # as if ten minutes had passed
    mark = world.mark()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.get("/web/"), range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert session.access_token != old_access and session.refresh_token != old_refresh
    refreshes = world.audit_since(mark, "token_refresh")
    assert [e.outcome for e in refreshes] == ["ok"]  # one rotation, no reuse alarm
    assert not world.audit_since(mark, "token_reuse")


def test_a_session_whose_tokens_were_revoked_must_sign_in_again(
        world: World, client: httpx.Client) -> None:
    session = session_of(world, client)
    world.service.logout(session.access_token, session.refresh_token)  # e.g. from the API
    r = client.get("/web/")
    assert r.status_code == 303 and r.headers["location"] == "/web/login?next=%2Fweb%2F"
    assert 'rv_session=""' in r.headers["set-cookie"]  # the cookie is cleared
    assert world.server.server.config.app.state.web.sessions.get(
        client.cookies.get("rv_session") or "x") is None


def test_an_unknown_page_parameter_is_answered_with_a_page(client: httpx.Client) -> None:
    r = client.get("/web/studies/x?zoom=7")
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("text/html")
    assert "parameters are not valid" in r.text


def test_the_root_sends_visitors_to_sign_in(world: World) -> None:
    with httpx.Client(base_url=world.base_url) as c:
        r = c.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/web/login"


def test_static_files_are_served_locally(world: World) -> None:
    with httpx.Client(base_url=world.base_url) as c:
        css = c.get("/web/static/radvault.css")
        js = c.get("/web/static/radvault.js")
    assert css.status_code == 200 and "focus-visible" in css.text
    assert js.status_code == 200 and "heatmap" in js.text
    for text in (css.text, js.text):
        assert "http://" not in text and "https://" not in text  # no CDN, no fonts from afar


@pytest.mark.parametrize(("target", "expected"), [
    ("/web/studies/1.2.3?zoom=2", "/web/studies/1.2.3?zoom=2"),
    ("/web/", "/web/"),
    ("https://evil.example/web/", None),
    ("//evil.example/web/", None),
    ("/web//evil.example", None),
    ("/web/\\evil", None),
    ("/api/v1/studies", None),
    ("/web/a\nb", None),
    ("", None),
    (None, None),
])
def test_sign_in_returns_only_to_local_pages(target: str | None, expected: str | None) -> None:
    assert safe_next(target) == expected


def test_a_forged_session_cookie_is_refused_and_audited_but_a_first_visit_is_not(
        world: World) -> None:
    mark = world.mark()
    with httpx.Client(base_url=world.base_url, timeout=30) as c:
        first = c.get("/web/")  # no cookie yet: an ordinary first visit
        assert first.status_code == 303
        assert world.audit_since(mark, "token_refused") == []
        c.cookies.set("rv_session", "forgedsessionid12345")
        forged = c.get("/web/")
    assert forged.status_code == 303 and forged.headers["location"].startswith("/web/login")
    (refused,) = world.audit_since(mark, "token_refused")
    assert refused.actor == "anonymous" and refused.outcome == "refused"
    assert refused.details == {"reason": "unknown web session"}
    assert "forgedsessionid12345" not in str(refused.details)
