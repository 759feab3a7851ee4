"""Task functions by name, shared by the in-process runner and Celery workers."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from radvault.errors import ConfigurationError, ObjectNotFound

__all__ = ["TaskFunction", "TaskRegistry", "TaskSpec", "default_registry", "task"]

TaskFunction = Callable[[Any, dict[str, Any]], Mapping[str, Any] | None]
"""``fn(context, payload) -> result``: JSON in, JSON out (``None`` means ``{}``)."""

F = TypeVar("F", bound=TaskFunction)

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task.

    Attributes
    ----------
    name : str
        Its name (lower case letters, digits, ``_ . -``; at most 64).
    fn : TaskFunction
        ``fn(context, payload) -> dict``. It must be idempotent: a worker
        that crashes mid-task has its job re-run from the start.
    transient : tuple of exception classes
        Exceptions, beyond the default rule
        (:func:`radvault.jobs.is_transient`), that earn a retry.
    """

    name: str
    fn: TaskFunction
    transient: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigurationError(
                f"task name {self.name!r} is invalid (lower case letters, digits, '_.-', <= 64)"
            )
        if not callable(self.fn):
            raise ConfigurationError(f"task {self.name!r}: the function is not callable")
        for cls in self.transient:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise ConfigurationError(f"task {self.name!r}: transient must be exception classes")


class TaskRegistry:
    """Task functions by name.

    One registry serves both ways of running: :class:`radvault.jobs.JobRunner`
    threads call ``spec.fn`` directly, and :func:`radvault.jobs.celery_app.create_celery_app`
    wraps every registered name as a Celery task that calls the same function.

    Examples
    --------
    >>> registry = TaskRegistry()
    >>> @registry.task("echo")
    ... def echo(context, payload):
    ...     return payload
    >>> "echo" in registry
    True
    """

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}
        self._lock = threading.Lock()

    def register(
        self,
        name: str,
        fn: TaskFunction,
        *,
        transient: tuple[type[BaseException], ...] = (),
        replace: bool = False,
    ) -> TaskSpec:
        """Register ``fn`` under ``name``.

        Parameters
        ----------
        name : str
            The task name jobs are submitted with.
        fn : TaskFunction
            ``fn(context, payload) -> dict``; must be idempotent.
        transient : tuple of exception classes
            Extra exceptions to retry.
        replace : bool
            Allow replacing a task already registered under this name.

        Returns
        -------
        TaskSpec
            The registered task.

        Raises
        ------
        ConfigurationError
            When the name is invalid or taken (without ``replace``), or ``fn``
            is not callable.
        """
        spec = TaskSpec(name, fn, tuple(transient))
        with self._lock:
            old = self._tasks.get(name)
            if old is not None and old.fn is not fn and not replace:
                raise ConfigurationError(f"task {name!r} is already registered")
            self._tasks[name] = spec
        return spec

    def task(
        self, name: str, *, transient: tuple[type[BaseException], ...] = ()
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register`; returns the function unchanged.

        Raises
        ------
        ConfigurationError
            As :meth:`register`.
        """

        def decorate(fn: F) -> F:
            self.register(name, fn, transient=transient)
            return fn

        return decorate

    def get(self, name: str) -> TaskSpec:
        """Return the task registered under ``name``.

        Raises
        ------
        ObjectNotFound
            When no task has this name.
        """
        with self._lock:
            spec = self._tasks.get(name)
        if spec is None:
            raise ObjectNotFound(f"no task {name!r} is registered")
        return spec

    def names(self) -> list[str]:
        """The registered names, sorted."""
        with self._lock:
            return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._tasks

    def __iter__(self) -> Iterator[TaskSpec]:
        with self._lock:
            specs = [self._tasks[n] for n in sorted(self._tasks)]
        return iter(specs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)

    def __repr__(self) -> str:
        return f"TaskRegistry({self.names()})"


default_registry = TaskRegistry()
"""The registry that module-level :func:`task` fills (product tasks register here)."""


def task(
    name: str,
    *,
    transient: tuple[type[BaseException], ...] = (),
    registry: TaskRegistry | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as task ``name`` (in :data:`default_registry`).

    Raises
    ------
    ConfigurationError
        When the name is invalid or already taken by another function.
    """
    return (registry if registry is not None else default_registry).task(
        name, transient=transient
    )
