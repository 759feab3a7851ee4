"""Processes opening a vault at the same instant may all create the access tables."""

from radvault.access.store import AccessStore


def test_several_first_opens_at_once_all_get_the_tables(pg_schema_url, run_at_once) -> None:
    stores: list[AccessStore] = []

    def open_store(_k: int) -> None:
        stores.append(AccessStore.create(pg_schema_url))

    assert run_at_once(6, open_store) == []
    try:
        assert len(stores) == 6
        assert all(not s.has_site("default") for s in stores)
    finally:
        for store in stores:
            store.close()
