"""The docs stay true: every registered solver, method, teacher and CLI command is documented."""

from pathlib import Path

import pytest

from fewstep import solvers
from fewstep.bench import teachers
from fewstep.cli import build_parser
from fewstep.distill import available_methods

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("name", solvers.available())
def test_every_solver_is_in_the_solver_docs(name):
    assert f"`{name}`" in (DOCS / "solvers.md").read_text()


@pytest.mark.parametrize("name", available_methods())
def test_every_method_is_in_the_distillation_docs(name):
    assert f"`{name}`" in (DOCS / "distillation.md").read_text()


@pytest.mark.parametrize("name", [n for n in teachers.available()
                                  if not n.startswith("gmm") and ":" not in n])  # zoo: zoo.md
def test_every_data_set_is_in_the_data_docs(name):
    assert f"`{name}`" in (DOCS / "datasets.md").read_text()


def test_every_cli_command_is_in_the_readme():
    readme = (DOCS.parent / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices
    for cmd in commands:
        assert f"fewstep {cmd}" in readme, cmd
