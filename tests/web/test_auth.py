"""Signing in and out in a real browser: every role's landing page, the cookie, the keyboard."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import httpx
import pytest
from webkit import PASSWORD, Browsing, ServerThread, World

from radvault.api import ApiSettings, create_app, make_self_signed

HOMES = {"rad-n": "/web/", "phys-n": "/web/", "tech-n": "/web/upload", "audit1": "/web/audit",
         "admin1": "/web/admin/users"}


@pytest.mark.parametrize("username", sorted(HOMES))
def test_each_role_lands_on_its_own_page(web: Browsing, username: str) -> None:
    page = web.page(username)
    assert page.url == web.world.base_url + HOMES[username]
    assert page.locator(".who-name").inner_text() == username
    response = page.goto(HOMES[username])
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["cache-control"] == "no-store"


def test_the_session_cookie_is_httponly_strict_and_opaque(web: Browsing) -> None:
    page = web.page("rad-n")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["rv_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert session["secure"] is False  # plain HTTP on loopback; see the TLS test
    assert session["value"].count(".") == 0 and len(session["value"]) >= 43  # not a JWT
    assert page.evaluate("document.cookie") == ""  # invisible to scripts


def test_a_wrong_password_is_refused_without_saying_why(web: Browsing) -> None:
    page = web.page()
    page.goto("/web/login")
    page.get_by_label("User name").fill("rad-n")
    page.get_by_label("Password").fill("not the password")
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Sign in").click()
    assert nav.value.status == 401
    assert "wrong user name or password" in page.get_by_role("alert").inner_text()
    assert not [c for c in page.context.cookies() if c["name"] == "rv_session"]
    page.goto("/web/login")
    web.shoot(page, "login")


def test_sign_in_works_from_the_keyboard_with_visible_focus(web: Browsing) -> None:
    page = web.page()
    page.goto("/web/login")
    assert page.evaluate("document.activeElement.id") == "username"  # autofocus
    page.keyboard.type("rad-n")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    focused = page.evaluate("""() => {
        const el = document.activeElement, style = getComputedStyle(el);
        return {text: el.textContent.trim(), outline: style.outlineStyle,
                width: parseFloat(style.outlineWidth)};
    }""")
    assert focused["text"] == "Sign in"
    assert focused["outline"] != "none" and focused["width"] >= 2
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/web/")
    page.keyboard.press("Tab")  # the first stop of every page: skip to the content
    assert page.evaluate("document.activeElement.textContent") == "Skip to main content"
    assert page.locator(".skip-link").bounding_box()["y"] >= 0  # shown when focused


def test_a_login_post_without_the_form_token_is_refused(web: Browsing) -> None:
    page = web.page()
    page.goto("/web/login")
    mark = web.world.mark()
    r = page.request.post("/web/login", form={"username": "rad-n", "password": PASSWORD},
                          max_redirects=0)
    assert r.status == 403
    assert not [c for c in page.context.cookies() if c["name"] == "rv_session"]
    refused = web.world.audit_since(mark, "request_refused")
    assert [e.details.get("reason") for e in refused] == ["csrf"]


def test_signing_out_revokes_the_session(web: Browsing) -> None:
    page = web.page("rad-n")
    stolen = {c["name"]: c["value"] for c in page.context.cookies()}["rv_session"]
    mark = web.world.mark()
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.url.endswith("/web/login?signed_out=1")
    assert "signed out" in page.get_by_role("status").inner_text()
    assert web.world.audit_since(mark, "logout")
    replay = web.page()
    replay.context.add_cookies([{"name": "rv_session", "value": stolen,
                                 "url": web.world.base_url}])
    response = replay.goto("/web/")
    assert "/web/login" in replay.url and response.status == 200


def test_a_visitor_is_sent_to_sign_in_and_back(web: Browsing) -> None:
    page = web.page()
    page.goto("/web/audit?limit=5")
    assert re.search(r"/web/login\?next=%2Fweb%2Faudit%3Flimit%3D5$", page.url)
    page.get_by_label("User name").fill("audit1")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    assert page.url.endswith("/web/audit?limit=5")


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/web/",
                                    "/api/v1/studies", "/web/\\evil"])
def test_sign_in_never_redirects_off_the_pages(web: Browsing, target: str) -> None:
    page = web.page()
    page.goto("/web/login?next=" + httpx.QueryParams({"x": target})["x"].replace("&", "%26"))
    page.get_by_label("User name").fill("audit1")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    assert page.url == web.world.base_url + "/web/audit"


def test_over_tls_the_cookie_is_secure_and_host_bound(world: World, tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    app = create_app(world.settings, service=world.service,
                     api=ApiSettings(manage_service=False))
    server = ServerThread(app, ssl_certfile=str(cert), ssl_keyfile=str(key)).start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{server.port}", verify=trust) as c:
            form = c.get("/web/login")
            token = re.search(r'name="login_token" value="([^"]+)"', form.text)
            assert token is not None
            r = c.post("/web/login", data={"username": "rad-n", "password": PASSWORD,
                                           "login_token": token.group(1)})
            assert r.status_code == 303
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("__Host-rv_session=")
            for flag in ("HttpOnly", "Path=/", "SameSite=strict", "Secure"):
                assert flag.lower() in cookie.lower()
            assert "strict-transport-security" in r.headers
            assert c.get("/web/").status_code == 200
    finally:
        server.stop()
