import json

import pytest
import torch

from fewstep import data
from fewstep.data.images import digits_array
from fewstep.metrics import ChecksumError
from fewstep.metrics.extractors import VERSION, DigitsCNN, digits_cnn, training_indices


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
    sidecar = tmp_path / f"{VERSION}.json"
    sidecar.write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        digits_cnn(tmp_path)


def test_digits_cnn_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        DigitsCNN()(torch.zeros(2, 3, 16, 16))


def test_digits_cnn_never_trains_on_a_test_image():
    """The bench scores digits against the data test split in this extractor's space, so
    none of its training images may be a test image (v1 trained on 287 of the 359)."""
    train = digits_array()[training_indices()].reshape(len(training_indices()), -1)
    test = data.get("digits").load("test").numpy().reshape(-1, 64)
    assert len(train) + len(test) == 1797
    shared = {r.tobytes() for r in train} & {r.tobytes() for r in test}
    assert not shared
    torch.testing.assert_close(torch.from_numpy(train),
                               data.get("digits").load("train").reshape(-1, 64))
    assert "train split only" in DigitsCNN.trained_on and "no test image" in DigitsCNN.trained_on


def test_bench_records_what_each_feature_space_was_trained_on(tmp_path):
    from fewstep.bench.runner import feature_space
    from fewstep.bench.teachers import get

    digits, _ = feature_space(get("digits"), tmp_path)
    assert VERSION in digits and DigitsCNN.trained_on in digits
    pixels, extractor = feature_space(get("gmm2"), tmp_path)  # no extractor of its own
    assert extractor is None and "trained on nothing" in pixels
