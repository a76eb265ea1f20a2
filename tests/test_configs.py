"""Compose every option of every config group and build the cheap objects from it."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from continual.cli import _conf_dir, stream_source
from continual.streams import StreamSpec

CONF = Path(_conf_dir())
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())


OVERLAYS = ("experiment", "method")  # groups not in the defaults list: added with +group=option


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_every_group_has_options():
    assert {"adapter", "backbone", "learner", "router", "stream", "tracking", "trainer"} <= set(GROUPS)


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    overrides = [f"{'+' if group in OVERLAYS else ''}{group}={option}"]
    if (group == "stream" and option == "cl5") or (group == "experiment" and option == "cl5_methods"):
        overrides.append(f"stream.data_dir={SHARED / 'cl5'}")
    cfg = _compose(overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group in ("adapter", "trainer", "router"):
        assert instantiate(cfg[group]) is not None
    if group == "learner":  # needs a backbone to build (tests/test_baselines.py does); here: the target resolves
        assert callable(instantiate(cfg[group], _partial_=True))
    if group == "stream":
        assert stream_source(cfg.stream).name == option



def test_cl5_named_orders_are_permutations_of_its_tasks():
    cfg = _compose([f"stream=cl5", f"stream.data_dir={SHARED / 'cl5'}"])
    spec = StreamSpec.from_dict(OmegaConf.to_container(cfg.stream, resolve=True))
    names = sorted(t.name for t in spec.tasks)
    assert spec.orders and all(sorted(order) == names for order in spec.orders.values())


@pytest.mark.skipif(not (SHARED / "cl5").is_dir(), reason="shared cl5 data not present")
def test_cl5_loads_in_a_standard_order():
    cfg = _compose(["stream=cl5", f"stream.data_dir={SHARED / 'cl5'}", "stream.order=mbpa2"])
    stream = stream_source(cfg.stream).load()
    assert stream.task_names == ["dbpedia", "yahoo", "agnews", "amazon", "yelp"]
    assert [len(t.labels) for t in stream.tasks] == [14, 10, 4, 5, 5]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_sweeps_methods_that_exist(experiment):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    methods = cfg.hydra.sweeper.params["+method"].split(",")
    assert len(methods) >= 5 and set(methods) <= set(options("method"))
    for method in methods:  # each method picks a learner and a router
        choices = _compose([f"+experiment={experiment}", f"+method={method}"])
        assert choices.learner._target_ and choices.router._target_
