"""Sites as ingest sees them: every study goes into a site that exists.

Sites (hospitals, imaging centres) are kept by the access core
(:class:`~radvault.access.users.Accounts`, ``radvault sites add``), and grants
name them. A study stored under a site nobody registered could never be granted
by site, so every way in (``radvault ingest``, ``radvault pull``, the API's
upload, the upload page, STOW-RS, C-STORE through a node's site) and ``radvault
dicom nodes add`` refuse a site that does not exist.

The one exception is :data:`~radvault.access.users.DEFAULT_SITE`, the site of
every path that names none: ``radvault init`` registers it, and a vault made
before that gets it on first use (or when the clinical service opens a vault
already holding studies of it), audited as ``site.add`` by ``system``.
"""

from __future__ import annotations

import logging

from radvault.access.store import AccessStore
from radvault.access.users import DEFAULT_SITE, ensure_site, is_site_name
from radvault.errors import ConfigurationError, ObjectNotFound
from radvault.vault.vault import Vault

__all__ = ["DEFAULT_SITE", "ensure_default_site", "require_site", "site_exists", "study_site"]

log = logging.getLogger(__name__)


def site_exists(vault: Vault, site: str) -> bool:
    """Whether ``site`` is registered in the vault's database (nothing is created).

    Parameters
    ----------
    vault : Vault
        The open vault (the access tables share its catalog's database).
    site : str
        The site's name.

    Returns
    -------
    bool
        True when the site exists.
    """
    return AccessStore(vault.catalog.engine).has_site(site)


def ensure_default_site(vault: Vault) -> bool:
    """Register :data:`DEFAULT_SITE` unless it exists (audited as ``site.add`` by ``system``).

    Parameters
    ----------
    vault : Vault
        The open, writable vault.

    Returns
    -------
    bool
        True when it was created now.

    Raises
    ------
    ConfigurationError
        If the access tables cannot be created.
    """
    if site_exists(vault, DEFAULT_SITE):
        return False
    store = AccessStore.create(vault.catalog.write_engine())
    created = ensure_site(store, DEFAULT_SITE, actor="system", audit=vault.audit.append)
    if created is not None:
        log.info("registered the default site")
    return created is not None


def require_site(vault: Vault, site: str) -> str:
    """Return ``site`` if studies may go into it: it exists, or it is the default site.

    The default site is registered on first use (:func:`ensure_default_site`).

    Parameters
    ----------
    vault : Vault
        The open vault.
    site : str
        The site new studies would belong to.

    Returns
    -------
    str
        ``site``.

    Raises
    ------
    ConfigurationError
        If no site of that name exists; the message names it and the command
        that adds it.
    """
    if site_exists(vault, site):
        return site
    if site == DEFAULT_SITE:
        ensure_default_site(vault)
        return site
    if not is_site_name(site):
        raise ConfigurationError(f"unknown site {site!r}: a site's name is 1-64 letters, "
                                 "digits, '.', '_' or '-', starting with a letter or digit")
    raise ConfigurationError(
        f"unknown site {site!r}: add it first with `radvault sites add {site}`")


def study_site(vault: Vault, study_id: str) -> str | None:
    """The site of a committed study, ``None`` when the catalog holds no such study."""
    try:
        return vault.catalog.get_study(study_id).site
    except ObjectNotFound:
        return None
