"""Compose every option of every config group and build the cheap objects from it."""

import dataclasses
import importlib
import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from continual.commands.cli import plain
from continual.commands.cmdline import conf_dir
from continual.run.assemble import build, stream_file, stream_source
from continual.streams import StreamSpec

CONF = conf_dir()
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())


OVERLAYS = ("experiment", "method")  # groups not in the defaults list: added with +group=option


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_every_group_has_options():
    assert {"adapter", "backbone", "learner", "router", "stream", "tracking", "trainer"} <= set(GROUPS)


BUILT = ("adapter", "trainer", "router", "learner")  # groups whose objects build without data, a model or a store


def _fields(obj) -> dict:
    """An object's settings as its config names them (``lambda_`` is ``lambda``; tuples are lists)."""
    values = (
        {f.name.rstrip("_"): getattr(obj, f.name) for f in dataclasses.fields(obj)}
        if dataclasses.is_dataclass(obj)
        else dict(vars(obj))
    )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _same(config_value, built_value) -> bool:
    if dataclasses.is_dataclass(built_value):
        fields = _fields(built_value)
        return all(_same(v, fields[k]) for k, v in config_value.items() if k != "_target_")
    return config_value == built_value


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS if g != "hydra" for o in options(g)])
def test_every_option_composes_and_its_values_reach_the_object(group, option):
    overrides = [f"{'+' if group in OVERLAYS else ''}{group}={option}"]
    if (group == "stream" and option == "cl5") or (group == "experiment" and option == "cl5_methods"):
        overrides.append(f"stream.data_dir={SHARED / 'cl5'}")
    if group == "stream" and option.startswith("fbtod"):
        overrides.append(f"stream.data_dir={SHARED / 'fbtod'}")
    config = plain(_compose(overrides))
    for name in BUILT:
        node = {k: v for k, v in config[name].items() if k != "_target_"}
        built = build(config[name], name)
        assert f"{type(built).__module__}.{type(built).__name__}".endswith(config[name]["_target_"].split(".")[-1])
        fields = _fields(built)
        for key, value in node.items():  # every key of the YAML file arrives in the object, unchanged
            assert _same(value, fields[key]), (name, key, value, fields[key])
    source = stream_source(config["stream"])
    assert source.name == config["stream"]["name"] and (group != "stream" or source.name == option)
    if group == "tracking":
        assert config["tracking"]["_target_"] == "continual.tracking.MLflowTracker" and config["tracking"]["uri"]
    if group == "backbone":
        assert config["backbone"]["name"] == "packaged:all-MiniLM-L6-v2"


LAUNCHERS = {
    "basic": "BasicLauncher",
    "joblib": "JoblibLauncher",
    "ray": "RayLauncher",
    "submitit_local": "LocalLauncher",
    "submitit_slurm": "SlurmLauncher",
}


@pytest.mark.parametrize("launcher", options("hydra/launcher"))
def test_every_launcher_composes_to_its_plugin(launcher):
    from continual.commands.cmdline import LAUNCHER_PLUGINS

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target.rsplit(".", 1)[1] == LAUNCHERS[launcher]
    module = target.rsplit(".", 1)[0]
    if launcher in LAUNCHER_PLUGINS:
        assert module.startswith(LAUNCHER_PLUGINS[launcher][0])  # the extra the one-line error names
    if importlib.util.find_spec(module.split(".")[0]) and importlib.util.find_spec(module.rsplit(".", 1)[0]):
        assert getattr(importlib.import_module(module), LAUNCHERS[launcher])  # an installed plugin has the class


def test_cl5_named_orders_are_permutations_of_its_tasks():
    cfg = _compose(["stream=cl5", f"stream.data_dir={SHARED / 'cl5'}"])
    spec = StreamSpec.from_dict(OmegaConf.to_container(cfg.stream, resolve=True))
    names = sorted(t.name for t in spec.tasks)
    assert spec.orders and all(sorted(order) == names for order in spec.orders.values())


def test_the_slot_stream_picks_the_wide_adapter_and_the_command_line_wins():
    """fbtod_slots chooses adapter=pfeiffer_wide (token tasks need the width); other streams keep pfeiffer, and an
    adapter named on the command line (a group or a field) is what the run gets."""
    wide = build(plain(_compose(["stream=fbtod_slots"]).adapter), "adapter")
    assert (wide.placement, wide.reduction_factor) == ("pfeiffer", 4)
    assert build(plain(_compose(["stream=fbtod_hub"]).adapter), "adapter").reduction_factor == 16
    assert build(plain(_compose([]).adapter), "adapter").reduction_factor == 16
    assert _compose(["stream=fbtod_slots", "adapter=lora"]).adapter._target_.endswith("LoRAConfig")
    assert _compose(["stream=fbtod_slots", "adapter.reduction_factor=16"]).adapter.reduction_factor == 16
    node = stream_file(CONF / "stream" / "fbtod_slots.yaml")  # what scripts read without Hydra
    assert "defaults" not in node and StreamSpec.from_dict({**node, "data_dir": "."}).name == "fbtod_slots"


@pytest.mark.skipif(not (SHARED / "cl5").is_dir(), reason="shared cl5 data not present")
def test_cl5_loads_in_a_standard_order():
    cfg = _compose(["stream=cl5", f"stream.data_dir={SHARED / 'cl5'}", "stream.order=mbpa2"])
    stream = stream_source(plain(cfg.stream)).load()
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


def test_threads_caps_torch_and_the_blas_pools_and_restores_them():
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from continual.run.assemble import threads

    def blas() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):  # the tests' processes start with one thread
        torch_before, blas_before = torch.get_num_threads(), blas()
        assert set(blas_before) == {2}
        with threads(1):
            assert torch.get_num_threads() == 1 and set(blas()) == {1}
        assert torch.get_num_threads() == torch_before and blas() == blas_before
        with threads(None):  # as they are
            assert torch.get_num_threads() == torch_before and blas() == blas_before
