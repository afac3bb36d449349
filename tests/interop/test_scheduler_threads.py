"""One FewstepScheduler used by two threads at once: every loop either gives exactly its solo
result or a clear error; nothing hangs; no thread is started by the scheduler."""

import threading

import pytest
import torch

from fewstep.interop import FewstepScheduler
from fewstep.interop import scheduler as scheduler_module

pytest.importorskip("diffusers")

SHAPE = (2, 1, 4, 4)
STEPS = 6


def net(x, t):
    """A deterministic stand-in network (an eps prediction that depends on x and t)."""
    return torch.tanh(x) * (0.5 + t / 2000)


def loop(sched, seed, pause=lambda: None):
    sched.set_timesteps(STEPS)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    for t in sched.timesteps:
        pause()
        x = sched.step(net(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun"])
def test_replaced_run_fails_loudly_instead_of_restarting_mid_way(solver):
    sched = FewstepScheduler(solver=solver)
    sched.set_timesteps(STEPS)
    x = torch.randn(SHAPE)
    t0, t1 = sched.timesteps[:2]
    x = sched.step(net(x, t0), t0, x).prev_sample  # pipeline A, first step
    loop(sched, 5)  # pipeline B runs a whole loop on the same scheduler
    sched.set_timesteps(STEPS)  # ... and starts another
    with pytest.raises(RuntimeError, match="another pipeline sharing this scheduler"):
        sched.step(net(x, t1), t1, x)  # A resumes: refused, not restarted at timesteps[1]


def test_entering_while_another_thread_is_inside_raises_at_once(monkeypatch):
    inside, release, errors = threading.Event(), threading.Event(), []
    drop_learned_variance = scheduler_module.drop_learned_variance

    def held(*args):  # runs inside step(): hold the first thread there
        if not inside.is_set():
            inside.set()
            assert release.wait(timeout=30)
        return drop_learned_variance(*args)

    monkeypatch.setattr(scheduler_module, "drop_learned_variance", held)
    sched = FewstepScheduler(solver="dpmpp_2m")
    first = threading.Thread(target=loop, args=(sched, 0), daemon=True)
    first.start()
    assert inside.wait(timeout=30)
    for call in (lambda: sched.set_timesteps(STEPS),
                 lambda: sched.step(torch.zeros(SHAPE), sched.timesteps[0], torch.zeros(SHAPE))):
        try:
            call()
        except RuntimeError as e:
            errors.append(str(e))
    release.set()
    first.join(timeout=30)
    assert not first.is_alive()
    assert len(errors) == 2 and all("in use by another thread" in e for e in errors)


def test_two_threads_sharing_a_scheduler_never_hang_or_return_wrong_samples():
    sched = FewstepScheduler(solver="dpmpp_3m")
    expected = {seed: loop(FewstepScheduler(solver="dpmpp_3m"), seed) for seed in range(40)}
    outcomes = {"ok": 0, "error": 0, "wrong": 0}
    counts = threading.Lock()
    before = threading.active_count()

    def pipeline(seeds):
        for seed in seeds:
            try:
                out = loop(sched, seed, pause=lambda: threading.Event().wait(1e-4))
                kind = "ok" if torch.equal(out, expected[seed]) else "wrong"
            except (RuntimeError, ValueError):
                kind = "error"
            with counts:
                outcomes[kind] += 1

    threads = [threading.Thread(target=pipeline, args=(range(k, 40, 2),), daemon=True)
               for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), f"hung after {outcomes}"
    assert threading.active_count() == before
    assert outcomes["wrong"] == 0 and sum(outcomes.values()) == 40, outcomes
    assert outcomes["error"] > 0, outcomes  # the interleavings did collide


def test_copies_and_pickles_hold_the_plan_but_no_run():
    import copy
    import pickle

    sched = FewstepScheduler(solver="dpmpp_2m")
    sched.set_timesteps(STEPS)
    x = torch.randn(SHAPE)
    sched.step(net(x, sched.timesteps[0]), sched.timesteps[0], x)
    for clone in (copy.deepcopy(sched), pickle.loads(pickle.dumps(sched))):
        assert clone.step_index is None and clone._run is None
        torch.testing.assert_close(clone.timesteps, sched.timesteps)
        torch.testing.assert_close(loop(clone, 3), loop(FewstepScheduler(solver="dpmpp_2m"), 3),
                                   rtol=0, atol=0)
