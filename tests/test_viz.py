import torch

from fewstep.viz import image_grid, save_samples


def test_image_grid_layout_and_range():
    imgs = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0, 0.5)])
    grid = image_grid(imgs, ncol=2)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == 0.0 and grid[1, 5, 0] == 0.5 and grid[4, 1, 0] == 1.0
    assert grid.min() >= 0 and grid.max() <= 1


def test_save_samples_images_and_points(tmp_path):
    paths = save_samples(torch.rand(5, 3, 4, 4) * 2 - 1, tmp_path / "img", kind="image")
    assert [p.name for p in paths] == ["samples.pt", "samples.png"]
    paths = save_samples(torch.randn(50, 2), tmp_path / "pts")
    assert all(p.exists() for p in paths)
    assert torch.load(tmp_path / "pts" / "samples.pt").shape == (50, 2)
    assert not list((tmp_path / "pts").glob(".*tmp*"))
