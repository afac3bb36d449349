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
    assert main(args) == 0
    assert "68 already done, 0 run" in capsys.readouterr().out


def test_unknown_suite_is_a_clear_error(capsys):
    assert main(["bench", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["--help"], ["bench", "--help"], ["report", "--help"]])
def test_help_explains_itself(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd)
    assert e.value.code == 0
    assert "usage: fewstep" in capsys.readouterr().out
