"""The shared training loop: exact resume, atomic checkpoints, cost records, loading."""

import json

import pytest
import torch

import fewstep
import fewstep.train as train_module
from fewstep import GaussianMixture
from fewstep.distill import get_method
from fewstep.nets import ConsistencyPrecond, EDMPrecond, MLPDenoiserNet
from fewstep.train import (
    TrainConfig,
    checkpoint_info,
    latest_checkpoint,
    load_checkpoint,
    train,
)

GM = GaussianMixture.random(2, 3, spread=1.0, std=0.3, seed=0).float()
DATA = GM.sample(512, generator=torch.Generator().manual_seed(0))


class KillError(Exception):
    """Stands in for a kill signal in the middle of training."""


def _template(seed=0, method="edm"):
    torch.manual_seed(seed)
    net = MLPDenoiserNet(2, hidden=32, depth=1, emb_dim=16)
    return ConsistencyPrecond(net) if method in ("cd", "direct_cm") else EDMPrecond(net)


def _cfg(tmp_path, name="run", **kw):
    base = dict(steps=8, batch_size=32, lr=1e-3, ema_decay=0.9, checkpoint_every=3,
                log_every=1, progress=False, out_dir=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


METHODS = {
    "edm": lambda: get_method("edm")(),
    "pd": lambda: get_method("pd")(teacher_steps=4, steps_per_round=4),  # round change at 4
    "kd": lambda: get_method("kd")(num_pairs=64, nfe=6),
    "direct_cm": lambda: get_method("direct_cm")(num_scales=4, nfe=3),
    "cd": lambda: get_method("cd")(N=6, mu=0.9),  # the EMA target is checkpointed state
}


def _kill_at(step):
    def callback(s, info):
        if s == step:
            raise KillError

    return callback


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_after_kill_is_bitwise_exact(tmp_path, name):
    full = train(METHODS[name](), _template(0, name), DATA, _cfg(tmp_path, "full"), teacher=GM)
    cfg = _cfg(tmp_path, "killed")
    with pytest.raises(KillError):  # dies after step 7; the last checkpoint is step 6
        train(METHODS[name](), _template(0, name), DATA, cfg, teacher=GM, callback=_kill_at(7))
    assert latest_checkpoint(cfg.out_dir).name == "step_00000006"
    resumed = train(METHODS[name](), _template(1, name), DATA, cfg, teacher=GM)
    for a, b in ((full.student, resumed.student), (full.ema, resumed.ema)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k
    assert resumed.cost.steps == 8 and resumed.cost.teacher_nfe == full.cost.teacher_nfe
    log = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    steps = [json.loads(ln)["step"] for ln in log]
    assert steps == list(range(1, 9))  # the killed run's step-7 line was dropped


def test_interrupted_checkpoint_write_leaves_no_partial_directory(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, steps=6)
    real_save = train_module.save_file

    def arm(step, info):
        if step == 3:  # break the next checkpoint (step 6) after its first file
            calls = []

            def failing(tensors, path, *a, **k):
                calls.append(path)
                if len(calls) == 2:
                    raise OSError("disk full")
                return real_save(tensors, path, *a, **k)

            monkeypatch.setattr(train_module, "save_file", failing)

    with pytest.raises(OSError, match="disk full"):
        train(METHODS["edm"](), _template(), DATA, cfg, callback=arm)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003"]
    assert checkpoint_info(cfg.out_dir)["step"] == 3
    monkeypatch.setattr(train_module, "save_file", real_save)
    (root / ".tmp-step_00000009-dead").mkdir()  # left by a hard kill mid-write: ignored
    result = train(METHODS["edm"](), _template(), DATA, cfg)
    assert result.checkpoint.name == "step_00000006" and result.cost.steps == 6


def test_checkpoint_records_cost_config_and_method(tmp_path):
    kd = get_method("kd")(num_pairs=64, nfe=6)
    cfg = _cfg(tmp_path, steps=4, checkpoint_every=0, keep_checkpoints=1)
    result = train(kd, _template(), DATA, cfg, teacher=GM)
    info = checkpoint_info(cfg.out_dir)
    assert info["cost"] == {"steps": 4, "seconds": result.cost.seconds,
                            "teacher_nfe": 6 * 64 / 32}
    assert result.cost.seconds > 0
    assert info["config"]["batch_size"] == 32 and info["config"]["betas"] == [0.9, 0.999]
    assert info["method"] == {"name": "kd", "params": {"num_pairs": 64, "solver": "ipndm",
                                                       "nfe": 6, "sigma_min": 0.002,
                                                       "sigma_max": 80.0, "chunk": 1024}}
    assert info["model"]["class"] == "EDMPrecond"
    files = {p.name for p in result.checkpoint.iterdir()}
    assert files == {"checkpoint.json", "model.safetensors", "ema.safetensors",
                     "state.safetensors", "train_state.pt"}
    # Continuing the run for more steps adds to the recorded cost.
    longer = train(kd, _template(), DATA, TrainConfig(**{**cfg.__dict__, "steps": 6}),
                   teacher=GM)
    assert longer.cost.steps == 6 and longer.cost.seconds > result.cost.seconds
    assert longer.cost.teacher_nfe == result.cost.teacher_nfe  # the pairs were made once
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000006"]


def test_loaded_checkpoint_is_a_denoiser_for_every_solver(tmp_path):
    cfg = _cfg(tmp_path, steps=3)
    result = train(METHODS["edm"](), _template(), DATA, cfg)
    model = load_checkpoint(cfg.out_dir)
    assert isinstance(model, EDMPrecond) and not model.training
    x = 80 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.ones(4)), result.ema(x, torch.ones(4)))
        raw = load_checkpoint(result.checkpoint, weights="model")
        torch.testing.assert_close(raw(x, torch.ones(4)), result.student(x, torch.ones(4)))
        for name in fewstep.solvers.available(aliases=False):
            spec = fewstep.solvers.get(name)
            knobs = {"generator": torch.Generator().manual_seed(1)} if spec.stochastic else {}
            if spec.kind == "adaptive":
                out = spec(model, x, torch.tensor([80.0, 0.002, 0.0]), **knobs)
            else:
                out = fewstep.sample(model, x, name, nfe=max(spec.min_nfe, 4), **knobs)
            assert out.shape == x.shape and torch.isfinite(out).all(), name


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    cfg = _cfg(tmp_path, steps=1)
    unbuildable = EDMPrecond(torch.nn.Sequential())  # no spec: needs model=
    unbuildable.net = _Wrapped(MLPDenoiserNet(2, hidden=8, depth=1, emb_dim=8))
    train(METHODS["edm"](), unbuildable, DATA, cfg)
    with pytest.raises(ValueError, match="pass model="):
        load_checkpoint(cfg.out_dir)
    target = EDMPrecond(_Wrapped(MLPDenoiserNet(2, hidden=8, depth=1, emb_dim=8)))
    assert load_checkpoint(cfg.out_dir, model=target) is target
    with pytest.raises(ValueError, match="weights"):
        load_checkpoint(cfg.out_dir, weights="best")


class _Wrapped(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.inner = net

    def forward(self, x, c_noise, cond=None):
        return self.inner(x, c_noise, cond)


def test_resume_refuses_other_data_or_method(tmp_path):
    cfg = _cfg(tmp_path, steps=2)
    train(METHODS["edm"](), _template(), DATA, cfg)
    with pytest.raises(ValueError, match="different data"):
        train(METHODS["edm"](), _template(), DATA + 1, TrainConfig(**{**cfg.__dict__,
                                                                     "steps": 3}))
    with pytest.raises(ValueError, match="method 'edm'"):
        train(METHODS["kd"](), _template(), DATA, cfg, teacher=GM)
    with pytest.warns(UserWarning, match="lr"):
        train(METHODS["edm"](), _template(), DATA, TrainConfig(**{**cfg.__dict__, "lr": 0.1,
                                                                   "steps": 3}))
    fresh = train(METHODS["edm"](), _template(), DATA + 1,
                  TrainConfig(**{**cfg.__dict__, "resume": False}))
    assert fresh.cost.steps == 2


def test_builtin_dataset_conditional_data_and_no_out_dir():
    cfg = TrainConfig(steps=3, batch_size=16, progress=False, data_n=64)
    result = train(get_method("edm")(), _template(), "moons", cfg)
    assert result.checkpoint is None and result.cost.steps == 3
    x, labels = GM.sample(128, generator=torch.Generator().manual_seed(0), return_labels=True)
    student = EDMPrecond(MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=8, cond_type="label",
                                        num_classes=3))
    result = train(get_method("edm")(), student, {"x": x, "cond": labels}, cfg)
    out = fewstep.sample(result.ema, 80 * torch.randn(5, 2), "ddim", nfe=4,
                         cond={"cond": torch.tensor([0, 1, 2, 3, 0])})
    assert out.shape == (5, 2)
    with pytest.raises(TypeError, match="data must be"):
        train(get_method("edm")(), _template(), [1, 2], cfg)


def test_bf16_mixed_precision_on_cpu():
    cfg = TrainConfig(steps=3, batch_size=16, progress=False, mixed_precision="bf16")
    result = train(get_method("edm")(), _template(), DATA, cfg)
    assert all(p.dtype == torch.float32 for p in result.student.parameters())
    result = train(get_method("edm")(), _template(), DATA, TrainConfig(steps=1, progress=False))
    assert result.cost.steps == 1  # switching precision again in one process works


@pytest.mark.parametrize("kw, match", [
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"steps": -1}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"ema_decay": 1.0}, "ema_decay"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_data_order_is_a_function_of_seed_and_step():
    data = torch.arange(10.0)[:, None]
    a = train_module._Batches(data, 4, seed=3)
    b = train_module._Batches(data, 4, seed=3)
    seen = torch.cat([a(s) for s in range(5)]).flatten()  # two full epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:20].tolist()) == list(range(10))
    assert torch.equal(b(4), a(4)) and torch.equal(b(1), a(1))
    assert not torch.equal(train_module._Batches(data, 4, seed=4)(0), a(0))


def test_unet_teacher_trains_on_builtin_images(tmp_path):
    from fewstep.nets import UNet

    cfg = TrainConfig(steps=2, batch_size=8, progress=False, data_n=32, out_dir=str(tmp_path))
    train(get_method("edm")(), EDMPrecond(UNet(1, channels=8, channel_mult=(1, 2), emb_dim=16)),
          "digits", cfg)
    model = load_checkpoint(tmp_path)
    with torch.no_grad():
        x = fewstep.sample(model, 80 * torch.randn(2, 1, 8, 8), "heun", nfe=3)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
