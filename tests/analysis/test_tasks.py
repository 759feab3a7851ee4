"""Tasks are data: built-in JSON files and user files select manifest rows."""

from __future__ import annotations

import json

import pytest

from radvault.analysis.tasks import Task, TaskClass, builtin_task_names, load_task
from radvault.errors import DatasetError


def test_builtin_tasks_are_the_radbench_ones():
    assert builtin_task_names() == sorted(
        ["radbench6", "chest_xray", "brain_mri", "lung_ct", "kidney_ct", "breast_us",
         "radbench-all", "image_source"])
    assert load_task("image_source").class_names == (
        "chest_xray", "brain_mri", "lung_ct", "kidney_ct", "breast_us")
    six = load_task("radbench6")
    assert six.class_names == ("pneumonia", "glioma", "meningioma", "malignant_lung",
                               "kidney_stone", "malignant_breast")
    assert len(load_task("radbench-all").classes) == 16
    assert load_task("kidney_ct").class_names == ("cyst", "normal", "stone", "tumor")


def test_flips_only_where_anatomy_allows():
    assert not load_task("chest_xray").hflip
    assert load_task("brain_mri").hflip


def test_label_of_selects_on_every_given_column():
    six = load_task("radbench6")
    assert six.label_of({"dataset": "kidney_ct", "label": "stone"}) == 4
    assert six.label_of({"dataset": "kidney_ct", "label": "normal"}) is None


def test_row_matching_two_classes_is_refused():
    task = Task("t", (TaskClass("a", {"label": "x"}), TaskClass("b", {"dataset": "d"})))
    with pytest.raises(DatasetError, match="matches classes a, b"):
        task.label_of({"label": "x", "dataset": "d"})


def test_user_task_file_round_trips(tmp_path):
    task = Task.from_labels("mine", ["no", "yes"], hflip=True)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(task.to_dict()))
    assert load_task(path) == task
    assert load_task(str(path)).hflip


def test_a_task_file_may_say_which_class_means_no_disease(tmp_path):
    marks = {name: [c.normal for c in load_task(name).classes]
             for name in ("chest_xray", "brain_mri", "radbench6")}
    assert marks == {"chest_xray": [True, None], "brain_mri": [None, None, True, None],
                     "radbench6": [None] * 6}  # radbench6 has none: every answer refers
    task = Task("mine", (TaskClass("healthy", {"label": "h"}, normal=True),
                         TaskClass("ill", {"label": "i"}, normal=False)))
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(task.to_dict()))
    assert load_task(path) == task and load_task(path).classes[0].normal is True
    with pytest.raises(DatasetError, match="normal must be true or false"):
        Task.from_dict({"name": "t", "classes": [
            {"name": "a", "select": {"label": "a"}, "normal": "yes"},
            {"name": "b", "select": {"label": "b"}}]})


@pytest.mark.parametrize("name", ["nonexistent", "missing/file.json"])
def test_unknown_task_is_refused(name):
    with pytest.raises(DatasetError):
        load_task(name)


def test_task_needs_two_distinct_classes():
    with pytest.raises(DatasetError, match="at least two"):
        Task("t", (TaskClass("a", {"label": "a"}),))
    with pytest.raises(DatasetError, match="same selection"):
        Task("t", (TaskClass("a", {"label": "a"}), TaskClass("b", {"label": "a"})))
