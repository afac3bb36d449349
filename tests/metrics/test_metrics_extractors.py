import json

import pytest
import torch

from fewstep.metrics import ChecksumError
from fewstep.metrics.extractors import DigitsCNN, digits_cnn


def test_digits_cnn_is_trained_cached_and_verified(tmp_path):
    with torch.no_grad():  # as the bench calls it: training must still work
        net = digits_cnn(tmp_path)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    with torch.no_grad():
        acc = (net.head(net(x)).argmax(1) == torch.tensor(d.target)).float().mean()
    assert acc > 0.9  # a real classifier, so its features separate digits
    again = digits_cnn(tmp_path)  # loaded from the cache, hash-checked
    torch.testing.assert_close(again(x[:5]), net(x[:5]))
    sidecar = tmp_path / "digits-cnn-v1.json"
    sidecar.write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        digits_cnn(tmp_path)


def test_digits_cnn_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        DigitsCNN()(torch.zeros(2, 3, 16, 16))
