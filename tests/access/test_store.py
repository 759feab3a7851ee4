"""The access tables on SQLite and PostgreSQL, next to other tables in one database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, MetaData, String, Table, inspect, select
from sqlalchemy.exc import IntegrityError as SQLIntegrityError
from sqlalchemy.exc import StatementError

from radvault.access._models import AccessBase, GrantRow, SiteRow, UserRow
from radvault.access.policy import Action, Policy, Resource
from radvault.access.principal import Role
from radvault.access.store import AccessStore
from radvault.access.tokens import TokenService
from radvault.access.users import Accounts
from radvault.errors import AuthenticationFailed, ConfigurationError

PASSWORD = "Vivid-Lantern-42!"
TABLES = {"access_sites", "access_users", "access_grants", "access_refresh_tokens",
          "access_revoked_tokens"}


def test_the_tables_are_made_once_and_live_beside_other_tables(backend_engine):
    other = MetaData()
    Table("studies", other, Column("study_id", String(128), primary_key=True),
          Column("site", String(64)))
    other.create_all(backend_engine)
    AccessStore.create(backend_engine)
    AccessStore.create(backend_engine)  # idempotent
    schema = backend_engine.get_execution_options().get("schema_translate_map", {}).get(None)
    names = set(inspect(backend_engine).get_table_names(schema=schema))
    assert names == TABLES | {"studies"}
    assert {t.name for t in AccessBase.metadata.sorted_tables} == TABLES


def test_accounts_grants_and_tokens_work_on_each_backend(backend_accounts, backend_store,
                                                         signing_key, clock):
    accounts = backend_accounts
    accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north", password=PASSWORD)
    accounts.grant("admin1", "rad", study_id="1.2.3")
    accounts.grant("admin1", "rad", site="south")
    assert backend_store.grants_of("rad") == (frozenset({"south"}), frozenset({"1.2.3"}))

    user = accounts.get_user("rad")
    assert user.created_at == clock.now and user.created_at.tzinfo is UTC

    tokens = TokenService(accounts, signing_key, issuer="https://radvault.test",
                          audience="radvault-api")
    first = tokens.login("rad", PASSWORD)
    principal = tokens.authenticate(first.access_token)
    Policy(backend_store).authorize(principal, Action.VIEW_IMAGE, Resource.study("1.2.3", "north"))
    second = tokens.refresh(first.refresh_token)
    with pytest.raises(AuthenticationFailed):
        tokens.refresh(first.refresh_token)
    with pytest.raises(AuthenticationFailed):
        tokens.refresh(second.refresh_token)  # family revoked by the re-use
    tokens.logout(second.access_token)
    with pytest.raises(AuthenticationFailed, match="token revoked"):
        tokens.authenticate(second.access_token)


def test_lockout_times_round_trip_as_aware_utc(backend_accounts, clock):
    backend_accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north", password=PASSWORD)
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            backend_accounts.verify_credentials("rad", "Amber-River-Quiet-7")
    user = backend_accounts.get_user("rad")
    assert user.failed_attempts == 5
    assert user.locked_until.tzinfo is UTC and user.is_locked(clock.now)


def test_the_database_refuses_a_grant_with_two_targets(backend_accounts, backend_store, clock):
    backend_accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north")
    with pytest.raises(SQLIntegrityError), backend_store.session() as session:
        user_id = session.scalar(select(UserRow.id).where(UserRow.username == "rad"))
        session.add(GrantRow(user_id=user_id, study_id="1.2", site="north", created_at=clock.now))


def _grant_to_mars(store: AccessStore, accounts, clock) -> None:
    accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north")
    with pytest.raises(SQLIntegrityError, match=r"(?i)foreign key"), \
            store.session() as session:
        user_id = session.scalar(select(UserRow.id).where(UserRow.username == "rad"))
        assert user_id is not None  # only the unknown site can be what is refused
        session.add(GrantRow(user_id=user_id, site="mars", created_at=clock.now))


def test_postgresql_refuses_a_grant_to_an_unknown_site(pg_engine, hasher, audit, clock):
    store = AccessStore.create(pg_engine)
    accounts = Accounts(store, hasher=hasher, audit=audit, clock=clock)
    accounts.add_site("setup", "north")
    _grant_to_mars(store, accounts, clock)


def test_sqlite_stores_opened_from_a_url_enforce_foreign_keys(hasher, audit, clock):
    store = AccessStore.create("sqlite://")
    accounts = Accounts(store, hasher=hasher, audit=audit, clock=clock)
    accounts.add_site("setup", "north")
    _grant_to_mars(store, accounts, clock)
    store.close()


def test_a_store_can_be_opened_from_a_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'vault.sqlite3'}"
    store = AccessStore.create(url)
    assert repr(store) == "AccessStore(dialect='sqlite')"
    store.close()
    reopened = AccessStore.create(url)
    assert set(inspect(reopened.engine).get_table_names()) == TABLES
    reopened.close()


def test_naive_timestamps_are_refused(store):
    with pytest.raises(StatementError, match="timezone-aware"), store.session() as session:
        session.add(SiteRow(name="x", created_at=datetime(2026, 1, 1)))


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://x", "sqlite:////nonexistent/dir/x.db"])
def test_unusable_databases_are_configuration_errors(url):
    with pytest.raises(ConfigurationError):
        AccessStore.create(url)


def test_sqlite_in_memory_is_shared_by_all_sessions(clock):
    store = AccessStore.create("sqlite://")
    with store.session() as session:
        session.add(SiteRow(name="north", created_at=clock.now))
    with store.session() as session:
        assert session.scalars(select(SiteRow.name)).all() == ["north"]
    store.close()


def test_has_site_on_each_backend_and_before_the_tables_exist(backend_engine, clock):
    from radvault.access.users import ensure_site

    bare = AccessStore(backend_engine)  # nothing made yet: no site, and nothing created
    assert not bare.has_site("north")
    store = AccessStore.create(backend_engine)
    ensure_site(store, "north", actor="setup", clock=clock)
    assert store.has_site("north") and not store.has_site("south")
    assert ensure_site(store, "north", actor="setup", clock=clock) is None
