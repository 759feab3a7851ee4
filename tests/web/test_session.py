"""Server-side sessions, the login form's signed double submit, and the CSRF comparison."""

from __future__ import annotations

from datetime import timedelta

import pytest

from radvault.access.tokens import TokenPair
from radvault.errors import AccessDenied, ConfigurationError
from radvault.web._session import LoginGuard, SessionStore, WebSettings, check_csrf


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def pair(n: int = 0, expires_in: int = 600) -> TokenPair:
    return TokenPair(f"access-{n}", f"refresh-{n}", expires_in, 28_800)


def test_a_session_is_found_by_its_cookie_value_only() -> None:
    store = SessionStore(WebSettings())
    session_id, session = store.create("rad1", pair())
    assert store.get(session_id) is session
    assert store.get(session_id + "x") is None
    assert store.get(None) is None
    assert store.get("") is None


def test_every_login_gets_a_new_random_session_and_csrf_token() -> None:
    store = SessionStore(WebSettings())
    first_id, first = store.create("rad1", pair())
    second_id, second = store.create("rad1", pair())
    assert first_id != second_id and len(first_id) >= 43
    assert first.csrf_token != second.csrf_token


def test_tokens_never_show_in_repr() -> None:
    _, session = SessionStore(WebSettings()).create("rad1", pair(7))
    text = repr(session)
    assert "access-7" not in text and "refresh-7" not in text and session.csrf_token not in text


def test_an_idle_session_ends_and_a_used_one_lives_on() -> None:
    clock = FakeClock()
    store = SessionStore(WebSettings(idle_timeout=timedelta(minutes=30)), clock)
    session_id, _ = store.create("rad1", pair())
    clock.now += 29 * 60
    assert store.get(session_id) is not None  # used: its idle clock restarts
    clock.now += 29 * 60
    assert store.get(session_id) is not None
    clock.now += 31 * 60
    assert store.get(session_id) is None
    assert len(store) == 0


def test_the_least_recently_used_session_goes_first_when_full() -> None:
    store = SessionStore(WebSettings(max_sessions=2))
    a, _ = store.create("a", pair())
    b, _ = store.create("b", pair())
    store.get(a)  # a is now the most recent
    c, _ = store.create("c", pair())
    assert store.get(b) is None
    assert store.get(a) is not None and store.get(c) is not None


def test_drop_ends_a_session_and_returns_it_once() -> None:
    store = SessionStore(WebSettings())
    session_id, session = store.create("rad1", pair())
    assert store.drop(session_id) is session
    assert store.drop(session_id) is None
    assert store.get(session_id) is None


def test_the_access_token_is_renewed_shortly_before_it_expires() -> None:
    clock = FakeClock()
    store = SessionStore(WebSettings(refresh_margin=timedelta(seconds=30)), clock)
    _, session = store.create("rad1", pair(expires_in=600))
    assert not store.needs_refresh(session)
    clock.now += 571
    assert store.needs_refresh(session)
    session.renew(pair(1, expires_in=600), clock.now)
    assert session.access_token == "access-1" and session.refresh_token == "refresh-1"
    assert not store.needs_refresh(session)


def test_csrf_tokens_must_match_exactly() -> None:
    check_csrf("abc123", "abc123")
    for wrong in (None, "", "abc12", "abc1234", "ABC123"):
        with pytest.raises(AccessDenied):
            check_csrf("abc123", wrong)


def test_the_login_token_signs_its_cookie_nonce() -> None:
    guard = LoginGuard()
    nonce, token = guard.issue()
    guard.verify(nonce, token)
    other_nonce, other_token = guard.issue()
    with pytest.raises(AccessDenied):
        guard.verify(nonce, other_token)  # a token for another browser's cookie
    with pytest.raises(AccessDenied):
        guard.verify(None, token)
    with pytest.raises(AccessDenied):
        guard.verify(nonce, "")
    with pytest.raises(AccessDenied):
        LoginGuard().verify(other_nonce, other_token)  # another process's key


@pytest.mark.parametrize("kwargs", [{"idle_timeout": timedelta(0)},
                                    {"refresh_margin": timedelta(seconds=-1)},
                                    {"max_sessions": 0}, {"worklist_size": 0},
                                    {"worklist_size": 501}])
def test_settings_out_of_range_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        WebSettings(**kwargs)  # type: ignore[arg-type]
