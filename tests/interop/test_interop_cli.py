"""`fewstep bench` and `fewstep sample` on a local diffusers pipeline and an image folder."""

import numpy as np
import pytest

from fewstep.bench.store import Store
from fewstep.cli import main


@pytest.fixture
def image_folder(tmp_path):
    from skimage.io import imsave

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        imsave(folder / f"{i}.png", (rng.random((8, 8)) * 255).astype(np.uint8),
               check_contrast=False)
    return folder


def test_bench_accepts_a_diffusers_teacher_and_an_image_folder(pipeline_dir, image_folder,
                                                                tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text('name = "dm"\nteachers = ["gmm2"]\nmethods = ["ddim", "dpmpp_2m", '
                     '"diffusers:dpmpp_2m"]\nnfe = [3]\nseeds = [0]\nn_samples = 8\n'
                     'reference_rtol = 1e-3\n')
    teacher = f"diffusers:{pipeline_dir}"
    code = main(["bench", "--suite", str(suite), "--teacher", teacher, "--data",
                 str(image_folder), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0, capsys.readouterr()
    rows = Store(tmp_path / "out" / "results.sqlite").rows()
    assert len(rows) == 3 and {r["teacher"] for r in rows} == {teacher}
    for r in rows:
        assert r["nfe"] == 3
        assert {"ode_rmse", "sw", "mmd", "fd"} <= set(r["metrics"])
        assert r["config"]["feature_space"].startswith("pixels")


def test_sample_writes_a_grid_for_a_diffusers_teacher(pipeline_dir, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", "--teacher", f"diffusers:{pipeline_dir}", "--solver", "unipc_bh2",
                 "--nfe", "4", "--n", "6", "--out", str(out)]) == 0
    assert (out / "samples.png").exists() and (out / "samples.pt").exists()
