"""The zoo: recipes build deterministically, records hold hash and cost, entries load from the
package, and the bench runs zoo teachers and their students."""

import dataclasses
import json

import pytest
import torch

from fewstep import zoo
from fewstep.cli import main
from fewstep.distill import WHOLE_NETWORKS, network_kind

TINY = dict(steps=3, batch_size=32, data_n=256, warmup_steps=0)


def _tiny(name, **kw):
    return dataclasses.replace(zoo.recipe(name), name=f"tiny-{name}", **{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, zoo.build(_tiny("checkerboard-edm"), root)


def test_building_twice_gives_the_same_weights(tiny_teacher, tmp_path):
    _, first = tiny_teacher
    again = zoo.build(_tiny("checkerboard-edm"), tmp_path)
    assert again.sha256 == first.sha256 == zoo.sha256(first.weights)
    assert (tmp_path / "tiny-checkerboard-edm.safetensors").read_bytes() == \
        first.weights.read_bytes()
    other_seed = zoo.build(_tiny("checkerboard-edm", seed=1), tmp_path / "s1")
    assert other_seed.sha256 != first.sha256  # the hash does see the weights


@pytest.mark.parametrize("name", ["shapes-edm", "patches-edm"])
def test_an_image_teacher_recipe_builds_deterministically_on_its_data(name, tmp_path):
    """The 16x16 teachers' 3-level UNet takes its data set's shape (1 or 3 channels) and two
    tiny builds of the recipe give the same weights bytes."""
    import fewstep.data

    r = _tiny(name, batch_size=8)
    first, again = zoo.build(r, tmp_path / "a"), zoo.build(r, tmp_path / "b")
    assert first.sha256 == again.sha256 == zoo.sha256(again.weights)
    x = torch.randn(2, *fewstep.data.get(r.data).shape)
    with torch.no_grad():
        assert zoo.load(r.name, tmp_path / "a")(x, torch.full((2,), 1.0)).shape == x.shape


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
    root, _ = tiny_teacher
    for f in ("tiny-checkerboard-edm.json", "tiny-checkerboard-edm.safetensors"):
        (tmp_path / f).write_bytes((root / f).read_bytes())
    w = tmp_path / "tiny-checkerboard-edm.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"has sha256 .* the record says"):
        zoo.load("tiny-checkerboard-edm", tmp_path)


def test_unknown_and_unbuilt_entries_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown zoo entry 'nope'"):
        zoo.entry("nope")
    with pytest.raises(ValueError, match="not built"):
        zoo.entry("checkerboard-edm", tmp_path)
    with pytest.raises(ValueError, match="steps=5 but pd's schedule spans 150"):
        zoo.build(dataclasses.replace(zoo.recipe("checkerboard-pd"), steps=5), tmp_path)


def test_zoo_cli_lists_and_refuses_unknown(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in zoo.available():
        assert name in out
    assert main(["zoo", "build", "nope"]) == 2
    assert "unknown zoo entry 'nope'" in capsys.readouterr().err


def test_zoo_build_help_names_every_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["zoo", "build", "--help"])
    out = "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens
    assert all(name in out for name in zoo.RECIPES)


def _without_w(backbone):
    """A backbone spec less the guidance-scale embedding a guided-distillation student adds."""
    return {**backbone, "kwargs": {k: v for k, v in backbone["kwargs"].items()
                                   if k != "w_embedding"}}


def test_every_student_recipe_names_a_teacher_recipe():
    for name, r in zoo.RECIPES.items():
        assert (r.teacher is None) == (r.role != "student"), name
        if r.teacher is not None:
            t = zoo.recipe(r.teacher)
            assert t.data == r.data, name
            if network_kind(r.method) in WHOLE_NETWORKS:  # its own architecture
                assert r.backbone["class"] != t.backbone["class"], name
                continue
            assert _without_w(t.backbone) == _without_w(r.backbone), name  # warm-startable
            assert r.backbone["kwargs"].get("w_embedding", False) == (
                r.method in ("guided", "lcd", "lcf")
                or t.backbone["kwargs"].get("w_embedding", False)), name


def _clear_caches():
    from fewstep.bench import students, teachers

    for f in (zoo.entry, zoo.load, students.info, students.method_name, students.model,
              students.own_grid, students.gan_method, teachers.get):
        f.cache_clear()


@pytest.fixture()
def tiny_zoo(tiny_teacher, monkeypatch):
    """The package's zoo replaced by a tiny teacher and its CD student."""
    root, _ = tiny_teacher
    r = dataclasses.replace(_tiny("checkerboard-cd"), teacher="tiny-checkerboard-edm")
    zoo.build(r, root, teacher_root=root)
    monkeypatch.setattr(zoo, "weights_dir", lambda: root)
    _clear_caches()
    yield root
    _clear_caches()


def test_zoo_students_run_on_their_own_teacher_with_their_cost(tiny_zoo, tmp_path):
    from fewstep.bench.runner import run_suite
    from fewstep.bench.store import Store
    from fewstep.bench.suite import Suite

    t, cd = "zoo:tiny-checkerboard-edm", "student:zoo:tiny-checkerboard-cd"
    suite = Suite(name="z", teachers=[t, "gmm2"], methods=[cd, "ddim"], nfe=[1, 2], seeds=[0],
                  n_samples=16, reference_rtol=1e-4,
                  by_teacher={"gmm2": {"nfe": [2], "reference_rtol": 1e-3}})
    suite.validate()
    cases = {(c.teacher, c.method, c.nfe) for c in suite.cases()}
    assert {c.reference_rtol for c in suite.cases() if c.teacher == "gmm2"} == {1e-3}
    assert {c.reference_rtol for c in suite.cases() if c.teacher == t} == {1e-4}
    assert cases == {(t, cd, 1), (t, cd, 2), (t, "ddim", 1), (t, "ddim", 2), ("gmm2", "ddim", 2)}
    assert f"{cd}: a student of {t}, not run on gmm2" in suite.skipped
    assert run_suite(suite, tmp_path, progress=False).failed == 0
    rows = Store(tmp_path / "results.sqlite").rows()
    e = zoo.entry("tiny-checkerboard-cd")
    for r in rows:
        if r["method"] == cd:
            assert r["train_seconds"] == e.cost.seconds > 0
            assert r["train_teacher_nfe"] == e.cost.teacher_nfe * e.recipe.batch_size > 0
        else:
            assert r["train_seconds"] == 0.0 and r["train_teacher_nfe"] == 0.0


@pytest.mark.parametrize("by_teacher, match", [
    ({"moons": {"nfe": [1]}}, "by_teacher must map teachers of the suite"),
    ({"gmm2": {"colour": 1}}, "tables of nfe, reference_rtol"),
    ({"gmm2": {"nfe": [0]}}, r"by_teacher.gmm2.nfe must be positive integers"),
    ({"gmm2": {"reference_rtol": 2.0}}, r"by_teacher.gmm2.reference_rtol must be a number"),
])
def test_by_teacher_is_checked(by_teacher, match):
    from fewstep.bench.suite import Suite

    with pytest.raises(ValueError, match=match):
        Suite(name="z", teachers=["gmm2"], methods=["ddim"], nfe=[1], seeds=[0],
              by_teacher=by_teacher).validate()


def test_a_student_is_not_a_teacher(tiny_zoo):
    from fewstep.bench import teachers

    with pytest.raises(ValueError, match="is a cd student, not a teacher"):
        teachers.get("zoo:tiny-checkerboard-cd")


HYBRIDS = ("ddgan", "siddm", "ufogen", "add", "dfno")


@pytest.mark.parametrize("method", ["ddgan", "siddm"])
def test_a_gan_pair_recipe_is_the_pair_gan_pair_builds(method):
    from fewstep.distill import gan_pair
    from fewstep.nets import build_model, model_spec

    backbone = zoo.recipe(f"checkerboard-{method}").backbone
    assert model_spec(build_model(backbone)) == model_spec(gan_pair((2,), method))


@pytest.fixture(scope="module")
def tiny_hybrids(tiny_teacher):
    """Tiny builds of the checkerboard hybrid students of the tiny teacher, twice each."""
    root, _ = tiny_teacher
    built = {}
    for m in HYBRIDS:
        kw = {"params": {**zoo.recipe(f"checkerboard-{m}").params, "num_pairs": 64}} \
            if m == "dfno" else {}
        r = dataclasses.replace(_tiny(f"checkerboard-{m}", **kw),
                                teacher="tiny-checkerboard-edm")
        built[m] = (zoo.build(r, root, teacher_root=root),
                    zoo.build(r, root / "again", teacher_root=root))
    return root, {m: first for m, (first, _) in built.items()}, built


@pytest.mark.parametrize("method", HYBRIDS)
def test_hybrid_students_build_bitwise_and_keep_only_the_sampler(tiny_hybrids, method):
    from safetensors.torch import load_file

    from fewstep.nets import build_model

    _, _, built = tiny_hybrids
    first, again = built[method]
    assert first.sha256 == again.sha256 == zoo.sha256(first.weights)
    assert first.weights.read_bytes() == again.weights.read_bytes()
    # a generator/discriminator pair keeps its generator: the entry is what the bench samples
    kept = {"ddgan": "LatentPrecond", "siddm": "LatentPrecond", "ufogen": "EDMPrecond",
            "add": "EDMPrecond", "dfno": "TrajectoryOperator"}[method]
    assert first.model["class"] == kept
    assert set(build_model(first.model).state_dict()) == set(load_file(first.weights))
    assert first.recipe.betas == zoo.recipe(f"checkerboard-{method}").betas  # a tuple again
    assert (first.cost.teacher_nfe > 0) == (method in ("add", "dfno"))


def test_hybrid_students_run_at_their_native_nfe_and_reach_the_report(tiny_hybrids, tmp_path,
                                                                      monkeypatch):
    """On their zoo teacher: DDGAN and SIDDM at NFE T = 4 only, UFOGen and DFNO at 1, ADD at
    1..4; each row carries its training cost and the report's amortised-cost section and
    front see them."""
    from fewstep.bench.report import amortised, amortised_fronts, write_report
    from fewstep.bench.runner import run_suite
    from fewstep.bench.store import Store
    from fewstep.bench.suite import Suite

    root, entries, _ = tiny_hybrids
    monkeypatch.setattr(zoo, "weights_dir", lambda: root)
    _clear_caches()
    try:
        t = "zoo:tiny-checkerboard-edm"
        methods = {m: f"student:zoo:tiny-checkerboard-{m}" for m in HYBRIDS}
        suite = Suite(name="h", teachers=[t], methods=[*methods.values(), "ddim"],
                      nfe=[1, 2, 4], seeds=[0], n_samples=16, reference_rtol=1e-4)
        ran = {(c.method, c.nfe) for c in suite.cases()}
        assert ran == {(methods["ddgan"], 4), (methods["siddm"], 4), (methods["ufogen"], 1),
                       (methods["dfno"], 1), *((methods["add"], k) for k in (1, 2, 4)),
                       *(("ddim", k) for k in (1, 2, 4))}
        assert f"{methods['ddgan']} at NFE 1: a 4-step DDGAN student" in suite.skipped
        assert run_suite(suite, tmp_path, progress=False).failed == 0
        rows = Store(tmp_path / "results.sqlite").rows()
        for m, method in methods.items():
            e = entries[m]
            measured = {r["nfe"] for r in rows if r["method"] == method}
            assert measured == {"ddgan": {4.0}, "siddm": {4.0}, "ufogen": {1.0},
                                "dfno": {1.0}, "add": {1.0, 2.0, 4.0}}[m], m
            for r in (r for r in rows if r["method"] == method):
                assert r["train_seconds"] == e.cost.seconds > 0, m
                assert r["train_teacher_nfe"] == e.cost.teacher_nfe * e.recipe.batch_size, m
        points = amortised(rows, "sw")
        assert {p.agg.method for p in points} >= set(methods.values())
        fronts = amortised_fronts(points)
        assert all(t in front for front in fronts.values())
        html = write_report(rows, tmp_path / "report").read_text()
        for m in HYBRIDS:
            assert f"tiny-checkerboard-{m}" in html, m
    finally:
        _clear_caches()
