import re
import subprocess
import sys

import pytest

from fewstep.cli import main
from fewstep.train import load_checkpoint


def test_solvers_lists_every_solver(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in ("dpmpp_2m", "unipc_bh2", "heun", "rk45", "euler"):
        assert name in out


def test_bench_list_shows_cases_and_skips(capsys):
    assert main(["bench", "--suite", "smoke", "--list"]) == 0
    out = capsys.readouterr().out
    assert "gmm2" in out and "diffusers:dpmpp_2m" in out


def test_bench_runs_reports_and_resumes(tmp_path, capsys):
    args = ["bench", "--suite", "smoke", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best method" in out and (tmp_path / "report.html").exists()
    assert out.index("at NFE <= k use X") < out.index("best method")  # decision table first
    assert main(args) == 0
    assert "104 already done, 0 run" in capsys.readouterr().out  # 92 + 12 baseline cases


def test_unknown_suite_is_a_clear_error(capsys):
    assert main(["bench", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["--help"], ["bench", "--help"], ["report", "--help"]])
def test_help_explains_itself(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd)
    assert e.value.code == 0
    assert "usage: fewstep" in capsys.readouterr().out


def test_train_distill_and_sample_a_student(tmp_path, capsys):
    teacher, student = tmp_path / "teacher", tmp_path / "kd"
    common = ["--data", "moons", "--hidden", "32", "--batch-size", "64", "--quiet"]
    assert main(["train", "--out", str(teacher), "--steps", "20", *common]) == 0
    assert main(["distill", "--method", "kd", "--teacher", str(teacher), "--out", str(student),
                 "--steps", "5", *common]) == 0
    out = capsys.readouterr().out
    assert "teacher NFE 0" in out and "teacher NFE" in out.splitlines()[-1]
    assert main(["sample", "--teacher", "moons", "--student", str(student), "--nfe", "1",
                 "--n", "16", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "samples.png").exists()
    # a trajectory operator from the same teacher, on its own sigma_max; one step to sample
    assert main(["distill", "--method", "dfno", "--teacher", str(teacher), "--out",
                 str(tmp_path / "dfno"), "--steps", "3", "--param", "sigma_max=20",
                 "--param", "nfe=6", "--param", "slots=3", "--param", "num_pairs=64",
                 *common]) == 0
    assert load_checkpoint(tmp_path / "dfno").sigma_max == 20
    capsys.readouterr()
    assert main(["sample", "--teacher", "moons", "--student", str(tmp_path / "dfno"),
                 "--n", "16", "--out", str(tmp_path / "s2")]) == 2  # moons starts at 80
    assert "maps noise at sigma_max=20 to its sample" in capsys.readouterr().err


@pytest.mark.parametrize("method,nfe,bad_nfe", [("ufogen", 1, 2), ("add", 2, 5)])
def test_distill_and_sample_a_gan_student(tmp_path, capsys, method, nfe, bad_nfe):
    """The CLI builds the generator-discriminator pair once; sampling uses the native sampler
    (UFOGen: one step; ADD: its own levels, 1..4) and refuses other budgets."""
    teacher, student = tmp_path / "teacher", tmp_path / method
    common = ["--data", "moons", "--hidden", "32", "--batch-size", "32", "--quiet"]
    assert main(["train", "--out", str(teacher), "--steps", "3", *common]) == 0
    assert main(["distill", "--method", method, "--teacher", str(teacher), "--out",
                 str(student), "--steps", "2", *common]) == 0
    for n in (None, nfe):
        assert main(["sample", "--teacher", "moons", "--student", str(student), "--n", "8",
                     "--out", str(tmp_path / f"s{n}"), *(["--nfe", str(n)] if n else [])]) == 0
        assert (tmp_path / f"s{n}" / "samples.png").exists()
    capsys.readouterr()
    assert main(["sample", "--teacher", "moons", "--student", str(student), "--nfe",
                 str(bad_nfe), "--out", str(tmp_path / "bad")]) == 2
    assert re.search(rf"(--nfe|NFE) {bad_nfe}\b", capsys.readouterr().err)


@pytest.mark.parametrize("command", ["distill", "tune"])
def test_unknown_method_is_a_clear_error(tmp_path, capsys, command):
    with pytest.raises(SystemExit) as e:  # argparse: checked against the registry
        main([command, "--method", "magic", "--teacher", "moons", "--data", "moons", "--nfe",
              "4", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown " in err and "method 'magic'; available: " in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


# --- user errors: one line naming the bad value, exit status 2, no traceback ----------------

TINY_SUITE = ('name = "tiny"\nteachers = ["gmm2"]\nmethods = ["ddim", "heun"]\nnfe = [3, 5]\n'
              'seeds = [0]\nn_samples = 32\nreference_rtol = 1e-5\n')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths the error table refers to: a finished results directory and its merged copy,
    corrupt and truncated databases, a KD student, bad and wrong-size images, bad suites."""
    import numpy as np
    from skimage import io

    from fewstep.bench.store import Store

    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.toml").write_text(TINY_SUITE)
    assert main(["bench", "--suite", str(root / "tiny.toml"), "--out", str(root / "results"),
                 "--quiet", "--no-report"]) == 0
    assert main(["merge", str(root / "all.sqlite"), str(root / "results" / "results.sqlite")]) \
        == 0
    (root / "corrupt").mkdir()
    (root / "corrupt" / "results.sqlite").write_text("not a database\n" * 50)
    (root / "truncated").mkdir()
    big = Store(root / "big.sqlite")
    for i in range(100):
        big.put({"key": f"k{i}", "status": "ok", "config": {"pad": "x" * 800}})
    (root / "truncated" / "results.sqlite").write_bytes((root / "big.sqlite").read_bytes()[:4096])
    (root / "nfe.toml").write_text(TINY_SUITE.replace("nfe = [3, 5]", "nfe = [0, -1]"))
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    io.imsave(str(root / "digit.png"), np.zeros((8, 8), np.uint8), check_contrast=False)
    io.imsave(str(root / "big.png"), np.zeros((10, 12), np.uint8), check_contrast=False)
    io.imsave(str(root / "bigmask.png"), np.zeros((16, 16), np.uint8), check_contrast=False)
    common = ["--data", "moons", "--hidden", "16", "--batch-size", "16", "--quiet"]
    assert main(["train", "--out", str(root / "teacher"), "--steps", "2", *common]) == 0
    assert main(["distill", "--method", "kd", "--teacher", str(root / "teacher"), "--out",
                 str(root / "kd"), "--steps", "2", *common]) == 0
    return root


def _missing_cuda() -> str:
    import torch

    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


# argv (with {root} for the files fixture) -> text the one error line must contain
USER_ERRORS = [
    (["report", "--out", "{root}/corrupt"], "{root}/corrupt/results.sqlite"),
    (["report", "--out", "{root}/truncated"], "{root}/truncated/results.sqlite"),
    (["report", "--out", "{root}/nowhere/all.sqlite"], "{root}/nowhere/all.sqlite"),
    (["report", "--out", "{root}/results", "--metric", "bogus"], "'bogus'"),
    (["bench", "--suite", "{root}/tiny.toml", "--out", "{root}/results", "--metric", "bogus",
      "--no-report", "--quiet"], "'bogus'"),
    (["bench", "--suite", "{root}/corrupt/../nfe.toml", "--out", "{root}/x"], "[0, -1]"),
    (["bench", "--out", "{root}/corrupt", "--suite", "{root}/tiny.toml", "--quiet"],
     "{root}/corrupt/results.sqlite"),
    (["bench", "--out", "{root}/all.sqlite", "--suite", "{root}/tiny.toml"], "all.sqlite"),
    (["bench", "--device", _missing_cuda(), "--suite", "{root}/tiny.toml"], _missing_cuda()),
    (["merge", "{root}/m.sqlite", "{root}/all.sqlite", "{root}/nope.sqlite"], "nope.sqlite"),
    (["bench", "--suite", "{root}/tiny.toml", "--data", "{root}", "--out", "{root}/x"],
     "--data"),
    (["bench", "--suite", "{root}/tiny.toml", "--list", "--shard", "5/2"], "5/2"),
    (["train", "--data", "moons", "--steps", "1", "--out", "{root}/teacher", "--hidden", "16",
      "--batch-size", "16", "--quiet"], "at step 2, past steps=1"),
    (["train", "--data", "moonz", "--out", "{root}/t"], "'moonz'"),
    (["train", "--data", "moons", "--steps", "0", "--out", "{root}/t"], "--steps"),
    (["train", "--data", "moons", "--lr", "-1", "--out", "{root}/t"], "--lr"),
    (["train", "--data", "moons", "--ema-rampup", "0", "--out", "{root}/t"], "--ema-rampup"),
    (["distill", "--method", "magic", "--data", "moons", "--out", "{root}/t"], "'magic'"),
    (["sample", "--n", "0"], "--n"),
    (["sample", "--nfe", "0"], "--nfe"),
    (["sample", "--teacher", "moons", "--student", "{root}/kd", "--nfe", "4"], "--nfe 4"),
    (["sample", "--solver", "rk45", "--nfe", "5"], "--nfe 5: solver 'rk45' is adaptive"),
    (["edit", "inpaint", "{root}/digit.png", "--model", "digits", "--samples", "0"],
     "--samples"),
    (["edit", "inpaint", "{root}/bad.png", "--model", "digits"], "{root}/bad.png"),
    (["edit", "inpaint", "{root}/missing.png", "--model", "digits"], "{root}/missing.png"),
    (["edit", "inpaint", "{root}/big.png", "--model", "digits"], "{root}/big.png is 10x12"),
    (["edit", "inpaint", "{root}/digit.png", "--mask", "{root}/bigmask.png", "--model",
      "digits"], "{root}/bigmask.png is 16x16"),
    (["edit", "super-resolve", "{root}/digit.png", "--model", "digits", "--factor", "3"],
     "--factor 3"),
]


@pytest.mark.parametrize("argv,bad", USER_ERRORS, ids=[" ".join(a[:2]) + f" [{b}]"
                                                      for a, b in USER_ERRORS])
def test_user_errors_are_one_line_naming_the_value(files, capsys, argv, bad):
    argv = [a.format(root=files) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert bad.format(root=files) in lines[0]


def test_report_reads_the_merged_database_file(files, capsys):
    assert main(["report", "--out", str(files / "all.sqlite")]) == 0
    assert (files / "report.html").exists()  # beside the database
    assert "best method" in capsys.readouterr().out


def test_edit_resize_is_explicit_and_stated(files, capsys):
    out = files / "edited.png"
    assert main(["edit", "inpaint", str(files / "big.png"), "--model", "digits", "--resize",
                 "--solver", "heun", "--nfe", "3", "--samples", "1", "--out", str(out)]) == 0
    assert f"resized {files / 'big.png'} from 10x12 to 8x8 pixels" in capsys.readouterr().out


def test_ctrl_c_is_one_line_exit_130_and_keeps_finished_cases(tmp_path, monkeypatch, capsys):
    from fewstep.bench import runner
    from fewstep.bench.store import Store

    (tmp_path / "tiny.toml").write_text(TINY_SUITE)
    real, calls = runner.run_case, []

    def interrupted(case, ctx):
        calls.append(case.key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(case, ctx)

    monkeypatch.setattr(runner, "run_case", interrupted)
    assert main(["bench", "--suite", str(tmp_path / "tiny.toml"), "--out", str(tmp_path),
                 "--quiet"]) == 130
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "interrupted" in err and "Traceback" not in err
    store = Store(tmp_path / "results.sqlite")
    assert store.done() == set(calls[:2]) and store.claims() == []


def test_bench_prints_each_distinct_failure_once(tmp_path, monkeypatch, capsys):
    from fewstep.bench import runner

    (tmp_path / "tiny.toml").write_text(TINY_SUITE)

    def broken(case, ctx):
        return {"key": case.key, "suite": case.suite, "status": "error", "metrics": {},
                "error": "ValueError: cannot read image '/x/bad.png'"}

    monkeypatch.setattr(runner, "run_case", broken)
    assert main(["bench", "--suite", str(tmp_path / "tiny.toml"), "--out", str(tmp_path),
                 "--quiet", "--no-report"]) == 1
    out = capsys.readouterr().out
    assert "4 failed: 4 x ValueError: cannot read image '/x/bad.png' (e.g. gmm2/ddim/nfe=3/" \
           "seed=0)" in out


def test_results_paths_accept_a_directory_or_a_database_file(tmp_path):
    from fewstep.cli import results_paths

    (tmp_path / "run.sqlite").mkdir()  # a results directory that happens to end in .sqlite
    assert results_paths(str(tmp_path / "run.sqlite")) == \
        (tmp_path / "run.sqlite" / "results.sqlite", tmp_path / "run.sqlite")
    assert results_paths(str(tmp_path / "all.sqlite")) == (tmp_path / "all.sqlite", tmp_path)
    assert results_paths(str(tmp_path / "out")) == (tmp_path / "out" / "results.sqlite",
                                                    tmp_path / "out")


def test_bench_metric_is_checked_before_any_case_runs(files, capsys):
    assert main(["bench", "--suite", str(files / "tiny.toml"), "--out", str(files / "fresh"),
                 "--metric", "bogus", "--quiet"]) == 2
    assert not (files / "fresh").exists()


def test_a_folder_named_like_a_builtin_suite_is_not_a_suite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()  # e.g. left by `fewstep bench --out smoke`
    assert main(["bench", "--suite", "smoke", "--list"]) == 0
    assert "gmm2" in capsys.readouterr().out  # the built-in smoke suite's cases


def test_bench_list_honours_the_shard(files, capsys):
    def listed(*extra):
        assert main(["bench", "--suite", str(files / "tiny.toml"), "--list", *extra]) == 0
        return {line.split()[0] for line in capsys.readouterr().out.splitlines()
                if not line.startswith("skipped")}

    whole, first, second = listed(), listed("--shard", "0/2"), listed("--shard", "1/2")
    assert first and second and not first & second and first | second == whole


def test_an_unreadable_image_is_named(tmp_path):
    from fewstep.data.files import from_image_folder, infer_channels, read_pixels

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    for read in (read_pixels, infer_channels):
        with pytest.raises(ValueError, match=re.escape(f"cannot read image '{bad}'")):
            read(bad)
    with pytest.raises(ValueError, match=r"bad\.png"):
        from_image_folder("folder:bad", tmp_path, size=8)


@pytest.mark.parametrize("teacher", ["gmm2", "zoo:digits-edm"])
def test_sample_refuses_a_zoo_student_of_another_teacher(teacher, tmp_path, capsys):
    """A 2-D teacher used to sample it silently, an image teacher died in a traceback."""
    out = tmp_path / "s"
    assert main(["sample", "--teacher", teacher, "--student", "zoo:checkerboard-cd", "--n", "4",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fewstep sample: error: student:zoo:checkerboard-cd: a student of "
                   f"zoo:checkerboard-edm, not run on {teacher} (--teacher)"]
    assert not out.exists()
    assert main(["sample", "--teacher", "zoo:checkerboard-edm", "--student",
                 "zoo:checkerboard-cd", "--nfe", "2", "--n", "4", "--out", str(out)]) == 0


def test_sample_with_an_adaptive_solver_states_its_nfe(tmp_path, capsys):
    assert main(["sample", "--solver", "rk45", "--n", "8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"solver 'rk45' is adaptive: it spent [0-9.]+ evaluations per sample", out)


def test_sample_refuses_a_run_student_of_another_data_shape(files, tmp_path, capsys):
    """A KD student trained on moons (2-D) sampled with an image teacher died in a shape
    traceback; now one line names both shapes."""
    out = tmp_path / "s"
    assert main(["sample", "--teacher", "digits", "--student", str(files / "kd"), "--n", "4",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained on moons (2,)" in err[0] and "(1, 8, 8)" in err[0]
    assert not out.exists()


def test_sample_a_pd_student_defaults_to_its_own_steps(tmp_path, capsys):
    """`sample --student` picks a PD student's own step count (it said 'at NFE 10: a 4-step PD
    student' unless --nfe 4 was given)."""
    assert main(["sample", "--teacher", "zoo:digits-cond-edm@w=2", "--student",
                 "zoo:digits-cond-guided-pd4@w=2", "--n", "10", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "samples.pt").exists()


@pytest.mark.parametrize("student,solver", [("zoo:checkerboard-add", "heun"),
                                            ("zoo:checkerboard-ufogen", "heun"),
                                            ("zoo:checkerboard-pd", "ddim")])
def test_a_student_with_its_own_sampler_refuses_solver(tmp_path, capsys, student, solver):
    """An ADD, one-step, PD or GAN student is sampled by its own sampler; --solver heun on an
    ADD student used to run heun on it and return samples with std ~60 (noise)."""
    code = main(["sample", "--teacher", "zoo:checkerboard-edm", "--student", student,
                 "--solver", solver, "--n", "4", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--solver {solver}: {student} is a" in err and "leave --solver out" in err
    assert not (tmp_path / "s").exists()


def test_building_the_parser_imports_no_registry_it_only_lists_in_help():
    """`fewstep --help` and every other command must not pay for fewstep.tune (scipy.optimize,
    ~1 s) or fewstep.distill; their --help still lists the registries' names."""
    code = ("import sys; from fewstep.cli import build_parser; p = build_parser(); "
            "print('fewstep.tune' in sys.modules, 'fewstep.distill' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
    for command, names in (("tune", ["gits", "dpm_solver_v3", "pas"]),
                           ("distill", ["cd", "ufogen", "lcd"])):
        text = subprocess.run([sys.executable, "-m", "fewstep.cli", command, "--help"],
                              capture_output=True, text=True, check=True).stdout
        assert all(n in " ".join(text.split()) for n in names), text
