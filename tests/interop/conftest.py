"""Tiny diffusers models built in the test and saved to tmp dirs; nothing is downloaded."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()


def tiny_unet(seed: int = 0, **kw) -> "diffusers.UNet2DModel":
    """A 41k-parameter UNet2DModel on 1x8x8 images (random weights)."""
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw).eval()


@pytest.fixture(scope="session")
def make_unet():
    return tiny_unet


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory):
    """A saved DDPMPipeline (eps prediction, linear betas, DDPMScheduler defaults)."""
    path = tmp_path_factory.mktemp("ddpm_pipeline")
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(
        path)
    return path


@pytest.fixture(scope="session")
def pipeline_factory(tmp_path_factory):
    """Save a DDPMPipeline with the given DDPMScheduler config; return its directory."""

    def make(**scheduler_kw):
        path = tmp_path_factory.mktemp("pipeline")
        sched = diffusers.DDPMScheduler(**scheduler_kw)
        diffusers.DDPMPipeline(unet=tiny_unet(1), scheduler=sched).save_pretrained(path)
        return path

    return make

