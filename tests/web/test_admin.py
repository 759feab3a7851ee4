"""The admin's pages in a real browser: accounts, sites, grants, locks; never images."""

from __future__ import annotations

from webkit import PASSWORD, Browsing


def test_an_admin_grants_and_withdraws_a_study(web: Browsing,
                                              uploaded: dict[str, str]) -> None:
    study = uploaded["study_id"]
    web.world.add_user("rad-w", "radiologist", "south")
    admin = web.page("admin1")
    web.shoot(admin, "admin")
    with admin.expect_navigation():
        admin.get_by_role("link", name="rad-w").click()
    assert "No grants" in admin.locator("#grants").inner_text()
    admin.get_by_label("Or one study id").fill(study)
    with admin.expect_navigation():
        admin.get_by_role("button", name="Grant", exact=True).click()
    assert "Grant added" in admin.get_by_role("status").inner_text()
    assert study in admin.locator("#grants").inner_text()
    web.shoot(admin, "admin-grants")

    reader = web.page("rad-w")
    assert reader.goto(f"/web/studies/{study}").status == 200  # at once, no new sign-in

    with admin.expect_navigation():
        admin.get_by_role("button", name=f"Withdraw the grant of {study}").click()
    assert "Grant withdrawn" in admin.get_by_role("status").inner_text()
    assert reader.goto(f"/web/studies/{study}").status == 403  # at once too
    newest = [e.action for e in web.world.audit_since(0)
              if e.action in ("grant", "revoke") and e.actor == "admin1"]
    assert newest[:2] == ["revoke", "grant"]


def test_an_admin_is_refused_images_and_studies(web: Browsing,
                                               uploaded: dict[str, str]) -> None:
    study, instance = uploaded["study_id"], uploaded["instance_id"]
    page = web.page("admin1")
    assert page.goto(f"/web/studies/{study}/instances/{instance}/image.png").status == 403
    assert page.goto(f"/web/studies/{study}").status == 403
    assert page.goto("/web/").status == 403


def test_a_new_account_with_a_weak_password_is_refused_with_the_rules(web: Browsing) -> None:
    page = web.page("admin1")
    page.get_by_label("User name").fill("rad-new")
    page.get_by_label("Role", exact=True).select_option("radiologist")
    page.get_by_label("Site (clinical roles)").select_option("north")
    page.get_by_label("Initial password").fill("short")
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Add account").click()
    assert nav.value.status == 422
    assert page.locator("#form-error li").count() >= 1
    page.get_by_label("User name").fill("rad-new")
    page.get_by_label("Role", exact=True).select_option("radiologist")
    page.get_by_label("Site (clinical roles)").select_option("north")
    page.get_by_label("Initial password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Add account").click()
    assert page.url.endswith("/web/admin/users/rad-new?done=added")
    assert page.locator("#account-state").inner_text() == "active"


def test_a_locked_account_loses_its_open_session(web: Browsing) -> None:
    web.world.add_user("phys-lock", "physician", "north", grant_site="north")
    victim = web.page("phys-lock")
    admin = web.page("admin1")
    admin.goto("/web/admin/users/phys-lock")
    with admin.expect_navigation():
        admin.get_by_role("button", name="Lock account").click()
    assert admin.locator("#account-state").inner_text() == "locked"
    victim.goto("/web/")
    assert "/web/login" in victim.url
    with admin.expect_navigation():
        admin.get_by_role("button", name="Unlock account").click()
    assert admin.locator("#account-state").inner_text() == "active"
