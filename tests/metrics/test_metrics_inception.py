"""The Inception FID path with a randomly initialised network (no real weights here).

torch-fidelity imports torchvision at package import; where torchvision is absent (or, as on
some CPU-only machines, broken) a minimal stand-in is installed for these tests only."""

import importlib.util
import sys
import types

import pytest
import torch

from fewstep.metrics import frechet_distance_from_features
from fewstep.metrics.inception import CONVENTIONS, InceptionExtractor, quantize_uint8


def _torchvision_stand_in(monkeypatch):
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # missing, or installed but unloadable
        pass
    tv = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = datasets.STL10 = datasets.CIFAR100 = object
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    tv.datasets, tv.transforms, transforms.functional = datasets, transforms, functional
    for name, mod in {"torchvision": tv, "torchvision.datasets": datasets,
                      "torchvision.transforms": transforms,
                      "torchvision.transforms.functional": functional}.items():
        monkeypatch.setitem(sys.modules, name, mod)


@pytest.fixture
def random_weights(tmp_path, monkeypatch):
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed")
    _torchvision_stand_in(monkeypatch)
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with monkeypatch.context() as m:  # build the architecture without loading any weights
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        m.setattr(fe.torch, "load", lambda *a, **k: {})
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                             feature_extractor_weights_path="unused")
    path = tmp_path / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_fid_path_runs_with_a_random_network(random_weights):
    ext = InceptionExtractor(random_weights)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    b = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    fa, fb = ext(a), ext(b)
    assert fa.shape == (3, 2048) and fa.dtype == torch.float64 and torch.isfinite(fa).all()
    assert frechet_distance_from_features(fa, fa) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_from_features(fa, fb) > 0


def test_missing_weights_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        InceptionExtractor(tmp_path / "nope.pth")


def test_broken_torch_fidelity_shows_the_real_import_error(tmp_path, monkeypatch):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    for name in [m for m in sys.modules if m.split(".")[0] == "torch_fidelity"]:
        monkeypatch.delitem(sys.modules, name)
    broken = tmp_path / "site" / "torch_fidelity"  # installed, but its own import fails
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libtorchvision.so: undefined symbol')")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ImportError, match=r"installed but failed to import.*undefined symbol"):
        InceptionExtractor(weights)
    monkeypatch.delitem(sys.modules, "torch_fidelity", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled(), *sys.meta_path])
    with pytest.raises(ImportError, match="needs torch-fidelity: pip install torch-fidelity"):
        InceptionExtractor(weights)


class _NotInstalled:
    """An import finder for which torch-fidelity is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch_fidelity":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_quantisation_convention():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    q = quantize_uint8(x)
    assert q.shape == (1, 3, 2, 2) and q.dtype == torch.uint8
    assert q[0, 0].flatten().tolist() == [0, 128, 255, 255]
    assert "299x299" in CONVENTIONS
    with pytest.raises(ValueError, match="expected"):
        quantize_uint8(torch.zeros(2, 2, 4, 4))


@pytest.mark.slow
def test_bench_reports_inception_fid_for_image_teachers(random_weights, tmp_path):
    from fewstep.bench.runner import run_suite
    from fewstep.bench.store import Store
    from fewstep.bench.suite import Suite

    suite = Suite(name="fid", teachers=["digits"], methods=["ddim"], nfe=[2], seeds=[0],
                  n_samples=8, reference_rtol=1e-3, inception_weights=str(random_weights))
    assert run_suite(suite, tmp_path, progress=False).failed == 0
    (row,) = Store(tmp_path / "results.sqlite").rows()
    assert {"fid_inception", "kid_inception"} <= set(row["metrics"])
    assert any("299x299" in n for n in row["config"]["notes"])
