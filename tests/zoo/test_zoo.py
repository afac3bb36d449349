"""The zoo: recipes build deterministically, records hold hash and cost, entries load from the
package, and the bench runs zoo teachers and their students."""

import dataclasses
import json

import pytest
import torch

from fewstep import zoo
from fewstep.cli import main

TINY = dict(steps=3, batch_size=32, data_n=256, warmup_steps=0)


def _tiny(name, **kw):
    return dataclasses.replace(zoo.recipe(name), name=f"tiny-{name}", **{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, zoo.build(_tiny("checkerboard-edm"), root)


def test_building_twice_gives_the_same_weights(tiny_teacher, tmp_path):
    root, first = tiny_teacher
    again = zoo.build(_tiny("checkerboard-edm"), tmp_path)
    assert again.sha256 == first.sha256 == zoo.sha256(first.weights)
    assert (tmp_path / "tiny-checkerboard-edm.safetensors").read_bytes() == \
        first.weights.read_bytes()
    other_seed = zoo.build(_tiny("checkerboard-edm", seed=1), tmp_path / "s1")
    assert other_seed.sha256 != first.sha256  # the hash does see the weights


def test_record_holds_recipe_hash_and_cost(tiny_teacher):
    root, e = tiny_teacher
    rec = json.loads((root / "tiny-checkerboard-edm.json").read_text())
    assert rec["recipe"]["data"] == "checkerboard" and rec["recipe"]["steps"] == 3
    assert rec["sha256"] == e.sha256 and rec["cost"]["steps"] == 3
    assert rec["cost"]["seconds"] > 0 and rec["cost"]["teacher_nfe"] == 0  # trained on data
    assert e.recipe == _tiny("checkerboard-edm")  # the recipe round-trips through JSON
    D = zoo.load("tiny-checkerboard-edm", root)
    x = torch.randn(4, 2)
    assert D(x, torch.full((4,), 1.0)).shape == (4, 2)


def test_a_student_records_its_teacher_cost(tiny_teacher):
    root, _ = tiny_teacher
    r = dataclasses.replace(_tiny("checkerboard-cd"), teacher="tiny-checkerboard-edm")
    e = zoo.build(r, root, teacher_root=root)
    assert e.method["name"] == "cd" and e.cost.teacher_nfe > 0  # Heun steps of the teacher
    again = zoo.build(r, root / "again", teacher_root=root)
    assert again.sha256 == e.sha256


def test_tampered_weights_are_refused(tiny_teacher, tmp_path):
    root, e = tiny_teacher
    for f in ("tiny-checkerboard-edm.json", "tiny-checkerboard-edm.safetensors"):
        (tmp_path / f).write_bytes((root / f).read_bytes())
    w = tmp_path / "tiny-checkerboard-edm.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="has sha256 .* the record says"):
        zoo.load("tiny-checkerboard-edm", tmp_path)


def test_unknown_and_unbuilt_entries_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown zoo entry 'nope'"):
        zoo.entry("nope")
    with pytest.raises(ValueError, match="not built"):
        zoo.entry("checkerboard-edm", tmp_path)
    with pytest.raises(ValueError, match="steps=5 but pd's schedule spans 300"):
        zoo.build(dataclasses.replace(zoo.recipe("checkerboard-pd"), steps=5), tmp_path)


def test_zoo_cli_lists_and_refuses_unknown(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in zoo.available():
        assert name in out
    assert main(["zoo", "build", "nope"]) == 2
    assert "unknown zoo entry 'nope'" in capsys.readouterr().err


def test_every_student_recipe_names_a_teacher_recipe():
    for name, r in zoo.RECIPES.items():
        assert (r.teacher is None) == (r.role == "teacher"), name
        if r.teacher is not None:
            t = zoo.recipe(r.teacher)
            assert (t.data, dict(t.backbone)) == (r.data, dict(r.backbone))
