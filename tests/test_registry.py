"""Every registry answers an unknown name the same way: one line naming the bad value and
every available one, as a ValueError (bad input) that is also a KeyError (a failed lookup)."""

from collections.abc import Callable

import pytest

from fewstep import data, schedules, solvers, zoo
from fewstep._registry import Registry, UnknownNameError
from fewstep.bench import baselines, teachers
from fewstep.distill import get_method
from fewstep.distill.gan_terms import check_gan_loss
from fewstep.metrics import registry as metrics
from fewstep.tune import METHODS as TUNE_METHODS

LOOKUPS: dict[str, tuple[Callable[[str], object], str, str]] = {
    # kind: (lookup, one registered name, the kind's word in the message)
    "solver": (solvers.get, "dpmpp_2m", "solver"),
    "metric": (metrics.get, "ode_rmse", "metric"),
    "dataset": (data.get, "moons", "dataset"),
    "method": (get_method, "cd", "method"),
    "teacher": (teachers.get, "gmm16", "teacher"),
    "baseline": (baselines.get, "baseline:mean", "baseline"),
    "schedule": (schedules.get_schedule, "karras", "schedule"),
    "tuning method": (TUNE_METHODS.__getitem__, "gits", "tuning method"),
    "zoo entry": (zoo.recipe, "digits-edm", "zoo entry"),
    "GAN loss": (check_gan_loss, "hinge", "GAN loss"),
}


@pytest.mark.parametrize("kind", LOOKUPS)
def test_an_unknown_name_is_one_clear_line_listing_the_registry(kind):
    lookup, known, word = LOOKUPS[kind]
    assert lookup(known) is not None
    with pytest.raises(UnknownNameError) as err:
        lookup("no_such_thing")
    msg = str(err.value)
    assert msg.startswith(f"unknown {word} 'no_such_thing'; available: ") and "\n" not in msg
    assert known in msg
    assert isinstance(err.value, ValueError) and isinstance(err.value, KeyError)


def test_registry_refuses_a_taken_name_unless_overwrite_and_lists_sorted():
    r: Registry[int] = Registry("widget", {"b": 2, "a": 1})
    assert list(r) == ["b", "a"] and r.names() == ["a", "b"] and len(r) == 2 and "a" in r
    assert r.add("a", 1) == 1  # the same entry again: a no-op
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        r.add("a", 3)
    r.add("a", 3, overwrite=True)
    assert r["a"] == 3
    r.remove("a")
    r.remove("a")  # absent: no error
    with pytest.raises(UnknownNameError, match=r"^unknown widget 'a'; available: b$"):
        r["a"]
    assert str(UnknownNameError("x 'y'")) == "x 'y'"  # not KeyError's quoted repr
