"""Task registry: names checked, one function per name, decorator and explicit forms."""

from __future__ import annotations

import pytest

from radvault.errors import ConfigurationError, ObjectNotFound
from radvault.jobs import TaskRegistry, default_registry, task


def analyse(context, payload):
    return {"ok": True}


def other(context, payload):
    return {}


def test_register_and_look_up_by_name() -> None:
    registry = TaskRegistry()
    spec = registry.register("analyse", analyse)
    assert registry.get("analyse") is spec and spec.fn is analyse
    assert "analyse" in registry and "missing" not in registry
    assert registry.names() == ["analyse"] and len(registry) == 1
    assert [s.name for s in registry] == ["analyse"]
    with pytest.raises(ObjectNotFound):
        registry.get("missing")


def test_decorator_registers_and_returns_the_function() -> None:
    registry = TaskRegistry()

    @registry.task("report.render", transient=(ConnectionError,))
    def render(context, payload):
        return {}

    assert render(None, {}) == {}
    assert registry.get("report.render").fn is render
    assert registry.get("report.render").transient == (ConnectionError,)


def test_module_level_task_decorator_uses_the_given_or_default_registry() -> None:
    registry = TaskRegistry()
    task("mine", registry=registry)(analyse)
    assert registry.names() == ["mine"]
    assert "mine" not in default_registry


def test_a_name_is_taken_once_unless_replaced() -> None:
    registry = TaskRegistry()
    registry.register("analyse", analyse)
    registry.register("analyse", analyse)  # the same function again: harmless (re-import)
    with pytest.raises(ConfigurationError):
        registry.register("analyse", other)
    registry.register("analyse", other, replace=True)
    assert registry.get("analyse").fn is other


@pytest.mark.parametrize("name", ["", "Analyse", "has space", "1st", "x" * 65, "a/b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError):
        TaskRegistry().register(name, analyse)


def test_bad_functions_and_transient_classes_are_refused() -> None:
    registry = TaskRegistry()
    with pytest.raises(ConfigurationError):
        registry.register("x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        registry.register("x", analyse, transient=("OSError",))  # type: ignore[arg-type]
