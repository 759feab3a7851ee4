"""Classification tasks as data: which manifest rows form which class.

A task is a JSON file, so that a hospital can define its own without code::

    {"format": "radvault-task/1", "name": "radbench6", "description": "...",
     "augment": {"hflip": false},
     "classes": [{"name": "pneumonia",
                  "select": {"dataset": "chest_xray", "label": "pneumonia"}}, ...]}

Each class selects the manifest rows whose columns equal all the given values;
rows no class selects are not used. A class may say ``"normal": true`` (it means
"no disease"; model cards keep it, and a model with no such class refers every
answer: ``no_normal_class``). ``augment.hflip`` says whether a
left-right flip is anatomically acceptable for the task (it is not for chest
radiographs, where the heart's side matters).

The built-in tasks (``radbench6``, ``chest_xray``, ``brain_mri``, ``lung_ct``,
``kidney_ct``, ``breast_us``, ``radbench-all``, and ``image_source``, the image check's
"which source does this image look like") ship in ``analysis/tasks/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from radvault.errors import DatasetError

__all__ = ["BUILTIN_TASKS_DIR", "Task", "TaskClass", "builtin_task_names", "load_task"]

BUILTIN_TASKS_DIR = Path(__file__).resolve().parent / "tasks"
_FORMAT = "radvault-task/1"


@dataclass(frozen=True)
class TaskClass:
    """One class of a task: a name and the column values that select its rows.

    Raises
    ------
    DatasetError
        If the name is empty or the selection is empty.
    """

    name: str
    select: Mapping[str, str]
    #: ``True`` for a class that means "no disease", ``False`` for one that does not,
    #: ``None`` when the task file does not say (the model card then goes by the name).
    normal: bool | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise DatasetError("a task class needs a non-empty name")
        if self.normal is not None and not isinstance(self.normal, bool):
            raise DatasetError(f"task class {self.name!r}: normal must be true or false")
        if not self.select:
            raise DatasetError(f"task class {self.name!r} selects nothing")
        object.__setattr__(self, "select", {str(k): str(v) for k, v in self.select.items()})

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether a manifest row (column -> value) belongs to this class."""
        return all(str(row.get(k, "")) == v for k, v in self.select.items())


@dataclass(frozen=True)
class Task:
    """A named list of classes over manifest rows.

    Parameters
    ----------
    name : str
        Task name, recorded in model cards.
    classes : sequence of TaskClass
        At least two classes with distinct names and distinct selections.
    description : str
        Free text.
    hflip : bool
        Whether left-right flips are acceptable augmentation for this task.

    Raises
    ------
    DatasetError
        If there are fewer than two classes or names/selections repeat.
    """

    name: str
    classes: tuple[TaskClass, ...]
    description: str = ""
    hflip: bool = False
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.name:
            raise DatasetError("a task needs a name")
        if len(self.classes) < 2:
            raise DatasetError(f"task {self.name!r} needs at least two classes")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise DatasetError(f"task {self.name!r} repeats a class name")
        selections = [tuple(sorted(c.select.items())) for c in self.classes]
        if len(set(selections)) != len(selections):
            raise DatasetError(f"task {self.name!r} has two classes with the same selection")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in index order."""
        return tuple(c.name for c in self.classes)

    def label_of(self, row: Mapping[str, Any]) -> int | None:
        """Return the class index of a manifest row, or ``None`` when no class selects it.

        Raises
        ------
        DatasetError
            If more than one class selects the row.
        """
        hits = [i for i, c in enumerate(self.classes) if c.matches(row)]
        if len(hits) > 1:
            raise DatasetError(
                f"task {self.name!r}: a row matches classes "
                f"{', '.join(self.classes[i].name for i in hits)}"
            )
        return hits[0] if hits else None

    @classmethod
    def from_labels(cls, name: str, labels: Sequence[str], *, hflip: bool = False) -> Task:
        """A task whose classes are the values of the ``label`` column, in the given order."""
        return cls(name=name, classes=tuple(TaskClass(lb, {"label": lb}) for lb in labels),
                   hflip=hflip)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "") -> Task:
        """Build a task from its JSON form.

        Raises
        ------
        DatasetError
            If the format tag or a required field is wrong.
        """
        if data.get("format", _FORMAT) != _FORMAT:
            raise DatasetError(f"{source or 'task'}: unknown task format {data.get('format')!r}")
        try:
            classes = tuple(TaskClass(str(c["name"]), dict(c["select"]), c.get("normal"))
                            for c in data["classes"])
            augment = dict(data.get("augment", {}))
            return cls(name=str(data["name"]), classes=classes,
                       description=str(data.get("description", "")),
                       hflip=bool(augment.get("hflip", False)), source=source)
        except (KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(f"{source or 'task'}: malformed task definition ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the task (round-trips through :meth:`from_dict`)."""
        return {"format": _FORMAT, "name": self.name, "description": self.description,
                "augment": {"hflip": self.hflip},
                "classes": [{"name": c.name, "select": dict(c.select),
                             **({} if c.normal is None else {"normal": c.normal})}
                            for c in self.classes]}


def builtin_task_names() -> list[str]:
    """Names of the tasks shipped with RadVault."""
    return sorted(p.stem for p in BUILTIN_TASKS_DIR.glob("*.json"))


def load_task(name_or_path: str | PathLike[str] | Task) -> Task:
    """Load a task by built-in name (``radbench6``) or from a JSON file.

    Parameters
    ----------
    name_or_path : str, path or Task
        A built-in task name, or the path of a task JSON file. A :class:`Task`
        is returned unchanged.

    Returns
    -------
    Task

    Raises
    ------
    DatasetError
        If no such task exists or the file is malformed.
    """
    if isinstance(name_or_path, Task):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not path.is_file():
        if "/" in text or "\\" in text or text.endswith(".json"):
            raise DatasetError(f"{text}: no such task file")
        path = BUILTIN_TASKS_DIR / f"{text}.json"
        if not path.is_file():
            raise DatasetError(
                f"unknown task {text!r}; built-in tasks: {', '.join(builtin_task_names())}"
            )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read task ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a task file must hold a JSON object")
    return Task.from_dict(data, source=str(path))
