import pytest

from fewstep.cli import main


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
    assert "80 already done, 0 run" in capsys.readouterr().out  # 68 + 12 baseline cases


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


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    assert main(["distill", "--method", "magic", "--data", "moons", "--out",
                 str(tmp_path)]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
