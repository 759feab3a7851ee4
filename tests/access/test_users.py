"""Accounts: sites, users, grants, logins, lock-out with back-off, auditing."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
from argon2 import PasswordHasher

from radvault.access.passwords import AccountError, PasswordPolicyError, make_hasher
from radvault.access.principal import Role
from radvault.access.users import DEFAULT_SITE, LOGIN_FAILED, Accounts, LockoutPolicy, ensure_site
from radvault.errors import AuthenticationFailed, ConfigurationError, ObjectNotFound

PASSWORD = "Vivid-Lantern-42!"
OTHER = "Amber-River-Quiet-7"


@pytest.fixture
def rad(accounts, audit):
    user = accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north", password=PASSWORD)
    audit.events.clear()
    return user


# ------------------------------------------------------------------ sites and users


def test_sites_are_created_listed_and_audited(accounts, audit):
    accounts.add_site("admin1", "east")
    assert [s.name for s in accounts.sites()] == ["east", "north", "south"]
    assert audit.events == [("admin1", "site.add", "ok", ["site:east"], {})]
    with pytest.raises(AccountError, match="already exists"):
        accounts.add_site("admin1", "east")
    with pytest.raises(AccountError, match="invalid site name"):
        accounts.add_site("admin1", "../etc")


def test_ensure_site_creates_a_site_once_without_a_hasher(store, audit, clock):
    created = ensure_site(store, DEFAULT_SITE, audit=audit, clock=clock)
    assert (created.name, created.created_at) == ("default", clock.now)
    assert ensure_site(store, DEFAULT_SITE, audit=audit, clock=clock) is None  # idempotent
    assert store.has_site("default") and not store.has_site("north")
    assert audit.events == [("system", "site.add", "ok", ["site:default"], {})]
    with pytest.raises(AccountError, match="invalid site name"):
        ensure_site(store, "../etc", audit=audit)


def test_a_store_without_tables_has_no_site_and_makes_none():
    from sqlalchemy import create_engine, inspect

    from radvault.access.store import AccessStore

    engine = create_engine("sqlite://")
    assert not AccessStore(engine).has_site(DEFAULT_SITE)
    assert inspect(engine).get_table_names() == []


def test_a_user_is_created_with_role_and_site(accounts, audit, clock):
    user = accounts.add_user("admin1", "rad", "radiologist", site="north", password=PASSWORD)
    assert (user.username, user.role, user.site) == ("rad", Role.RADIOLOGIST, "north")
    assert user.created_at == clock.now
    assert user.has_password and not user.deleted and not user.is_locked(clock.now)
    assert accounts.get_user("rad") == user
    assert audit.of("user.add") == [
        ("admin1", "user.add", "ok", [], {"user": "rad", "role": "radiologist", "site": "north"})
    ]


def test_user_creation_refuses_bad_input(accounts):
    with pytest.raises(AccountError, match="invalid username"):
        accounts.add_user("admin1", "bad name", Role.ADMIN, password=PASSWORD)
    with pytest.raises(AccountError, match="unknown role"):
        accounts.add_user("admin1", "x1", "surgeon", password=PASSWORD)
    with pytest.raises(AccountError, match="must belong to a site"):
        accounts.add_user("admin1", "x2", Role.PHYSICIAN, password=PASSWORD)
    with pytest.raises(AccountError, match="unknown site"):
        accounts.add_user("admin1", "x3", Role.PHYSICIAN, site="mars", password=PASSWORD)
    with pytest.raises(PasswordPolicyError, match="username"):
        accounts.add_user("admin1", "lantern", Role.ADMIN, password="Lantern-Vivid-42!")
    assert accounts.users() == []


def test_admins_and_auditors_need_no_site(accounts):
    assert accounts.add_user("setup", "boss", Role.ADMIN, password=PASSWORD).site is None
    assert accounts.add_user("setup", "aud", Role.AUDITOR, password=PASSWORD).site is None


def test_usernames_are_unique_and_never_reused(accounts, rad):
    with pytest.raises(AccountError, match="already taken"):
        accounts.add_user("admin1", "rad", Role.PHYSICIAN, site="north", password=PASSWORD)
    accounts.remove("admin1", "rad")
    with pytest.raises(AccountError, match="already taken"):
        accounts.add_user("admin1", "rad", Role.PHYSICIAN, site="north", password=PASSWORD)


def test_unknown_users_are_not_found(accounts):
    with pytest.raises(ObjectNotFound):
        accounts.get_user("ghost")
    for change in (accounts.lock, accounts.unlock, accounts.remove):
        with pytest.raises(ObjectNotFound):
            change("admin1", "ghost")


def test_role_changes_are_checked_and_audited(accounts, rad, audit):
    user = accounts.set_role("admin1", "rad", Role.AUDITOR)
    assert (user.role, user.site) == (Role.AUDITOR, None)
    with pytest.raises(AccountError, match="must belong to a site"):
        accounts.set_role("admin1", "rad", Role.TECHNOLOGIST)
    assert audit.of("user.role")[0][4] == {"user": "rad", "role": "auditor", "site": None}


# ------------------------------------------------------------------------- logins


def test_the_right_password_logs_in_and_is_audited(accounts, rad, audit):
    user = accounts.verify_credentials("rad", PASSWORD)
    assert user.username == "rad"
    assert audit.events == [("rad", "login", "ok", [], {})]


@pytest.mark.parametrize("username", ["rad", "ghost", "", "bad name"])
def test_every_refused_login_says_the_same_thing(accounts, rad, username):
    with pytest.raises(AuthenticationFailed) as info:
        accounts.verify_credentials(username, "wrong-password-123")
    assert str(info.value) == LOGIN_FAILED


def test_unknown_user_costs_a_hash_verification(store, audit, clock):
    calls = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash, password):
            calls.append(hash)
            return super().verify(hash, password)

    accounts = Accounts(store, hasher=CountingHasher(time_cost=1, memory_cost=8, parallelism=1),
                        audit=audit, clock=clock)
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("ghost", PASSWORD)
    assert len(calls) == 1  # the dummy hash, so timing matches a real account


def test_the_password_is_checked_outside_any_transaction(tmp_path, audit, clock):
    # The access tables share the catalog's database: a login must not hold it
    # (on SQLite, its one write lock) while argon2 runs, or every writer waits.
    from sqlalchemy import text

    from radvault.access.store import AccessStore
    from radvault.vault.catalog import Catalog

    catalog = Catalog.create(f"sqlite:///{tmp_path / 'vault.sqlite3'}", busy_timeout_s=0.2)
    writes = []

    class WriterDuringVerify(PasswordHasher):
        def verify(self, hash, password):
            # another writer of the vault's database, while the password is checked
            with catalog.write_engine().begin() as conn:
                conn.execute(text("CREATE TABLE IF NOT EXISTS probe (n INTEGER)"))
                conn.execute(text("INSERT INTO probe VALUES (1)"))
            writes.append(1)
            return super().verify(hash, password)

    store = AccessStore.create(catalog.write_engine())  # as the clinical service does
    accounts = Accounts(store, hasher=WriterDuringVerify(time_cost=1, memory_cost=8,
                                                          parallelism=1),
                        audit=audit, clock=clock)
    accounts.add_site("setup", "north")
    accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north", password=PASSWORD)
    assert accounts.verify_credentials("rad", PASSWORD).username == "rad"
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("rad", "wrong-password-123")
    assert accounts.get_user("rad").failed_attempts == 1
    assert len(writes) == 2
    catalog.close()


def test_a_password_changed_during_a_login_refuses_that_login(store, audit, clock):
    hooks = []

    class ResetDuringVerify(PasswordHasher):
        def verify(self, hash, password):
            while hooks:
                hooks.pop()()
            return super().verify(hash, password)

    accounts = Accounts(store, hasher=ResetDuringVerify(time_cost=1, memory_cost=8,
                                                        parallelism=1),
                        audit=audit, clock=clock)
    accounts.add_site("setup", "north")
    accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north", password=PASSWORD)
    hooks.append(lambda: accounts.set_password("admin1", "rad", OTHER))  # an admin, meanwhile
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("rad", PASSWORD)
    assert accounts.get_user("rad").failed_attempts == 0  # not counted against the account
    (refusal,) = audit.of("login_failed")
    assert refusal[0] == "rad" and refusal[4] == {"reason": "account changed during login"}
    assert accounts.verify_credentials("rad", OTHER).username == "rad"


def keyed(text: str) -> str:
    """A stand-in for the vault's keyed audit digest (HMAC under a secret the test holds)."""
    return hmac.new(b"k" * 32, text.encode(), hashlib.sha256).hexdigest()[:16]


def test_unknown_usernames_are_audited_only_as_a_digest(store, hasher, audit, clock):
    accounts = Accounts(store, hasher=hasher, audit=audit, clock=clock, digest=keyed)
    typed = "Vivid-Lantern-42!-typed-in-the-wrong-field"
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials(typed, "x")
    (event,) = audit.of("login_failed")
    assert event[0] == "anonymous" and event[2] == "refused"
    assert typed not in audit.text()
    assert event[4] == {"reason": "unknown user", "username_hmac": keyed(typed)}


def test_an_unknown_username_is_never_recorded_as_a_plain_hash(store, hasher, audit, clock):
    # A plain sha-256 of a short name (or a password typed as one) is reversed by
    # hashing a dictionary; only the injected keyed digest may name it.
    accounts = Accounts(store, hasher=hasher, audit=audit, clock=clock, digest=keyed)
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            accounts.verify_credentials("Summer2024!Quib", "x")
    first, again = (e[4] for e in audit.of("login_failed"))
    plain = hashlib.sha256(b"Summer2024!Quib").hexdigest()
    assert first == again, "repeated attempts with the same text still correlate"
    assert plain[:16] not in audit.text() and plain not in audit.text()
    assert "username_sha256" not in first


def test_without_a_digest_an_unknown_username_leaves_no_trace_of_itself(accounts, audit):
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("Summer2024!Quib", "x")
    assert audit.of("login_failed")[0][4] == {"reason": "unknown user"}


def test_passwords_never_reach_the_audit_trail(accounts, rad, audit):
    accounts.verify_credentials("rad", PASSWORD)
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("rad", OTHER)
    accounts.set_password("admin1", "rad", OTHER)
    assert PASSWORD not in audit.text() and OTHER not in audit.text()


def test_five_failures_lock_the_account_for_a_minute(accounts, rad, audit, clock):
    for _ in range(4):
        with pytest.raises(AuthenticationFailed):
            accounts.verify_credentials("rad", OTHER)
    assert accounts.get_user("rad").failed_attempts == 4
    assert not accounts.get_user("rad").is_locked(clock.now)
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("rad", OTHER)
    user = accounts.get_user("rad")
    assert user.locked_until == clock.now + timedelta(minutes=1)
    (lockout,) = audit.of("user.lockout")
    assert lockout[:3] == ("system", "user.lockout", "ok")
    assert lockout[4] == {"user": "rad", "failures": 5, "locked_seconds": 60}
    assert [e[2] for e in audit.of("login_failed")] == ["refused"] * 5

    # Locked: even the right password is refused, with the same message.
    with pytest.raises(AuthenticationFailed, match=LOGIN_FAILED):
        accounts.verify_credentials("rad", PASSWORD)
    assert audit.events[-1][1:3] == ("login_failed", "refused")
    assert audit.events[-1][4] == {"reason": "locked"}
    assert accounts.get_user("rad").failed_attempts == 5  # attempts while locked do not count

    clock.advance(seconds=61)
    assert accounts.verify_credentials("rad", PASSWORD).username == "rad"
    assert accounts.get_user("rad").failed_attempts == 0


def test_the_lock_doubles_with_each_further_failure(accounts, rad, clock):
    expected = [60, 120, 240, 480]
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            accounts.verify_credentials("rad", OTHER)
    seen = []
    for _ in expected:
        user = accounts.get_user("rad")
        length = user.locked_until - clock.now
        seen.append(int(length.total_seconds()))
        clock.advance(seconds=length.total_seconds() + 1)
        with pytest.raises(AuthenticationFailed):
            accounts.verify_credentials("rad", OTHER)
    assert seen == expected


def test_lockout_is_capped(store, hasher, clock):
    policy = LockoutPolicy(threshold=2, base=timedelta(minutes=1), maximum=timedelta(minutes=3))
    assert [policy.lock_for(n) for n in range(1, 6)] == [
        None, timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=3),
        timedelta(minutes=3)]
    with pytest.raises(ConfigurationError):
        LockoutPolicy(threshold=0)


def test_admin_lock_and_unlock(accounts, rad, audit, clock):
    accounts.lock("admin1", "rad")
    assert accounts.get_user("rad").is_locked(clock.now + timedelta(days=365))
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("rad", PASSWORD)
    accounts.unlock("admin1", "rad")
    assert accounts.verify_credentials("rad", PASSWORD).username == "rad"
    assert [(e[1], e[2]) for e in audit.events] == [
        ("user.lock", "ok"), ("login_failed", "refused"), ("user.unlock", "ok"), ("login", "ok")]
    assert audit.of("user.unlock") == [("admin1", "user.unlock", "ok", [], {"user": "rad"})]


def test_unlock_clears_a_lockout(accounts, rad, clock):
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            accounts.verify_credentials("rad", OTHER)
    accounts.unlock("admin1", "rad")
    assert accounts.verify_credentials("rad", PASSWORD).username == "rad"


def test_removed_users_cannot_log_in_and_lose_their_grants(accounts, rad, audit):
    accounts.grant("admin1", "rad", study_id="1.2.3")
    accounts.remove("admin1", "rad")
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("rad", PASSWORD)
    assert accounts.find_user("rad") is None
    assert accounts.get_user("rad", include_deleted=True).deleted
    assert accounts.store.grants_of("rad") == (frozenset(), frozenset())
    assert [u.username for u in accounts.users(include_deleted=True)] == ["rad"]
    assert accounts.users() == []
    assert audit.of("user.remove")[0][:3] == ("admin1", "user.remove", "ok")


def test_accounts_without_a_password_cannot_log_in(accounts):
    accounts.add_user("admin1", "sso-only", Role.PHYSICIAN, site="north")
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("sso-only", "")


def test_password_change_applies_policy_and_resets_failures(accounts, rad):
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("rad", OTHER)
    with pytest.raises(PasswordPolicyError):
        accounts.set_password("admin1", "rad", "short")
    accounts.set_password("admin1", "rad", OTHER)
    assert accounts.get_user("rad").failed_attempts == 0
    assert accounts.verify_credentials("rad", OTHER).username == "rad"
    with pytest.raises(AuthenticationFailed):
        accounts.verify_credentials("rad", PASSWORD)


def test_hashes_are_upgraded_when_parameters_change(store, audit, clock):
    old = Accounts(store, hasher=make_hasher(1, 8, 1), audit=audit, clock=clock)
    old.add_site("setup", "north")
    old.add_user("admin1", "rad", Role.RADIOLOGIST, site="north", password=PASSWORD)
    new = Accounts(store, hasher=make_hasher(2, 16, 1), audit=audit, clock=clock)

    def stored_hash():
        from sqlalchemy import select

        from radvault.access._models import UserRow
        with store.session() as s:
            return s.scalar(select(UserRow.password_hash).where(UserRow.username == "rad"))

    assert "m=8,t=1,p=1" in stored_hash()
    new.verify_credentials("rad", PASSWORD)
    assert "m=16,t=2,p=1" in stored_hash()
    assert audit.of("login")[-1][4] == {"rehashed": True}
    assert old.verify_credentials("rad", PASSWORD).username == "rad"  # still verifiable


def test_passwords_are_normalised_before_hashing(accounts):
    accounts.add_user("admin1", "uni", Role.ADMIN, password="\ufb01ne-Lantern-42!")
    assert accounts.verify_credentials("uni", "fine-Lantern-42!").username == "uni"


# ------------------------------------------------------------------------ grants


def test_grants_are_added_listed_and_removed(accounts, rad, audit):
    accounts.grant("admin1", "rad", study_id="1.2.840.1")
    accounts.grant("admin1", "rad", site="south")
    assert [g.object_id for g in accounts.grants("rad")] == ["site:south", "1.2.840.1"]
    assert accounts.store.grants_of("rad") == (frozenset({"south"}), frozenset({"1.2.840.1"}))
    accounts.revoke_grant("admin1", "rad", site="south")
    assert [g.object_id for g in accounts.grants("rad")] == ["1.2.840.1"]
    assert audit.events == [
        ("admin1", "grant", "ok", ["1.2.840.1"], {"user": "rad"}),
        ("admin1", "grant", "ok", ["site:south"], {"user": "rad"}),
        ("admin1", "revoke", "ok", ["site:south"], {"user": "rad"}),
    ]


def test_grant_input_is_checked(accounts, rad):
    with pytest.raises(AccountError, match="exactly one"):
        accounts.grant("admin1", "rad")
    with pytest.raises(AccountError, match="exactly one"):
        accounts.grant("admin1", "rad", study_id="1.2", site="north")
    with pytest.raises(AccountError, match="unknown site"):
        accounts.grant("admin1", "rad", site="mars")
    with pytest.raises(AccountError, match="invalid study id"):
        accounts.grant("admin1", "rad", study_id="1.2; DROP TABLE")
    accounts.grant("admin1", "rad", study_id="1.2")
    with pytest.raises(AccountError, match="exists already"):
        accounts.grant("admin1", "rad", study_id="1.2")
    with pytest.raises(ObjectNotFound):
        accounts.revoke_grant("admin1", "rad", study_id="9.9")
    with pytest.raises(ObjectNotFound):
        accounts.grant("admin1", "ghost", study_id="1.2")


def test_a_grant_of_a_study_the_catalog_lacks_is_revoked_under_its_digest(store, hasher, audit,
                                                                         clock):
    # Only the use case can see the catalog; it says so, and the id stays out of the trail.
    accounts = Accounts(store, hasher=hasher, audit=audit, clock=clock, digest=keyed)
    accounts.add_site("setup", "north")
    accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north", password=PASSWORD)
    accounts.grant("setup", "rad", study_id="ACC77331")
    audit.events.clear()
    accounts.revoke_grant("admin1", "rad", study_id="ACC77331", catalogued=False)
    assert accounts.grants("rad") == []
    assert audit.events == [
        ("admin1", "revoke", "ok", [], {"user": "rad", "unknown_id_hmac": keyed("ACC77331")})]
    assert "ACC77331" not in audit.text()
