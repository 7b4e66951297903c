"""Every lesson notebook runs top to bottom three ways: as shipped (each exercise's check cell says
"not done yet"), with the reference solutions of lessons/solutions/ in place of the stubs (every
check passes), and with a wrong solution in place of each stub (each check cell fails with its
grader's diagnosis, and the rest of the notebook still runs). tests/test_exercises.py grades every
wrong solution directly; here the first of each exercise runs inside its notebook."""
from pathlib import Path

import nbclient
import nbformat
import pytest

from tests import test_exercises
from tests.test_exercises import EXERCISES, graded_stubs

LESSONS = sorted((Path(__file__).resolve().parent.parent / "lessons").glob("*.ipynb"))
NOT_DONE = "not done yet"


def prepared(path, mode):
    """The notebook at ``path`` with its stub cells filled in as ``mode`` says; returns it and
    [(index of a check cell, its exercise)]."""
    nb = nbformat.read(path, as_version=4)
    stubs = graded_stubs(nb.cells, path.stem)
    for i, exercise in stubs:
        _, _, name, wrongs = EXERCISES[exercise]
        if mode == "solved":
            nb.cells[i].source = (path.parent / "solutions" / f"{path.stem}.py").read_text()
        elif mode == "wrong":
            wrong = wrongs[0][0]
            (attr,) = [k for k, v in vars(test_exercises).items() if v is wrong]
            nb.cells[i].source = ("import sys\nsys.path.insert(0, '..')  # the repository\n"
                                  f"from tests.test_exercises import {attr} as {name}")
    return nb, [(i + 1, exercise) for i, exercise in stubs]


def outputs(cell, kind):
    return [o for o in cell.get("outputs", []) if o.get("output_type") == kind]


def text(cell):
    return "".join(o.get("text", "") for o in outputs(cell, "stream"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shipped", "solved", "wrong"])
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(path, mode):
    nb, check_cells = prepared(path, mode)
    assert check_cells, f"{path.name} has no exercise"
    # A cell may train the lessons' shared networks the first time (lessons/trained.py): minutes.
    client = nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                                     allow_errors=mode == "wrong",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failure
    assert any("image/png" in o.get("data", {}) for c in nb.cells
               for o in outputs(c, "display_data")), f"{path.name} shows no figure"
    for i, exercise in check_cells:
        cell, errors = nb.cells[i], outputs(nb.cells[i], "error")
        if mode == "shipped":
            assert NOT_DONE in text(cell), f"{path.name} cell {i} ({exercise}): {text(cell)!r}"
        elif mode == "solved":
            assert text(cell) and NOT_DONE not in text(cell), \
                f"{path.name} cell {i} ({exercise}): {text(cell)!r}"
        else:
            message = EXERCISES[exercise][3][0][1]
            assert errors and errors[0]["ename"] == "AssertionError" and \
                message in errors[0]["evalue"], \
                f"{path.name} cell {i} ({exercise}) did not fail with {message!r}: {errors}"
    failed = [i for i, c in enumerate(nb.cells) if outputs(c, "error")
              and i not in dict(check_cells)]
    assert not failed, f"{path.name}: cells {failed} failed beyond the checks of wrong solutions"
