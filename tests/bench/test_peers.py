"""diffusers' schedulers run as bench methods: exact NFE, same sigma range as fewstep."""

import pytest
import torch

from fewstep import CountingDenoiser, GaussianMixture, solvers
from fewstep.bench import peers

pytest.importorskip("diffusers")
GM = GaussianMixture.random(3, 3, spread=1.0, std=0.3, seed=0).float()


@pytest.mark.parametrize("name", peers.available())
@pytest.mark.parametrize("nfe", [3, 5, 9])
def test_peer_spends_exactly_nfe(name, nfe):
    counter = CountingDenoiser(GM)
    x = 80.0 * torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    out = peers.run_peer(name, counter, x, nfe, 0.002, 80.0)
    assert counter.nfe == nfe and out.shape == x.shape and torch.isfinite(out).all()


def test_heun_rejects_even_budgets():
    with pytest.raises(peers.UnreachableNFEError, match="nfe=4 is even"):
        peers.run_peer("diffusers:heun", GM, torch.zeros(2, 3), 4, 0.002, 80.0)


def test_vp_table_spans_the_sigma_range():
    betas = peers.vp_table(0.002, 80.0)
    ab = torch.cumprod(1 - betas, 0)
    s = ((1 - ab) / ab).sqrt()
    assert float(s[0]) == pytest.approx(0.002, rel=1e-6)
    assert float(s[-1]) == pytest.approx(80.0, rel=1e-6)


@pytest.mark.parametrize("peer,ours", [("euler", "ddim"), ("heun", "heun")])
def test_sigma_space_peers_match_fewstep_on_the_same_karras_sigmas(peer, ours):
    x = 80.0 * torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    theirs = peers.run_peer(f"diffusers:{peer}", GM, x, 9, 0.002, 80.0)
    p = solvers.plan(ours, 9, sigma_min=0.002, sigma_max=80.0)
    torch.testing.assert_close(solvers.get(ours)(GM, x, p.sigmas, **p.knobs), theirs,
                               rtol=2e-3, atol=2e-3)


def test_a_prepared_peer_is_set_up_once_and_samples_once():
    peer = peers.PreparedPeer("diffusers:dpmpp_2m", 5, 0.002, 80.0)
    assert len(peer.scheduler.timesteps) == 5  # set_timesteps is part of the set-up
    x = 80.0 * torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    counter = CountingDenoiser(GM)
    out = peer.sample(peer.model(counter), x)
    torch.testing.assert_close(out, peers.run_peer("diffusers:dpmpp_2m", GM, x, 5, 0.002, 80.0),
                               rtol=0, atol=0)
    assert counter.nfe == 5
    with pytest.raises(RuntimeError, match="samples once"):
        peer.sample(peer.model(GM), x)


def test_unknown_peer_and_short_budget_are_named():
    with pytest.raises(ValueError, match="unknown peer 'diffusers:nope'"):
        peers.PreparedPeer("diffusers:nope", 3, 0.002, 80.0)
    with pytest.raises(peers.UnreachableNFEError, match="nfe=0 is below the minimum of 1"):
        peers.PreparedPeer("diffusers:ddim", 0, 0.002, 80.0)
