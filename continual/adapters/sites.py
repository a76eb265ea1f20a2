"""Finding the modules of a backbone's layers that adapters attach to (shared by every adapter kind)."""

from __future__ import annotations

from functools import reduce

from torch import nn

from continual.checks import check_int
from continual.errors import ContinualError


def check_skip_layers(value: object) -> None:
    check_int(value, "adapter.skip_layers", low=0)


def adapted_layers(backbone, skip_layers: int) -> list[tuple[int, nn.Module]]:
    depth = len(backbone.layers)
    if skip_layers >= depth:
        raise ContinualError(
            f"adapter.skip_layers={skip_layers} leaves no layer to adapt: backbone '{backbone.name}' has {depth} layers"
        )
    return list(enumerate(backbone.layers))[skip_layers:]


def layer_sites(backbone, skip_layers: int, field: str, paths: dict[str, str]) -> dict[str, nn.Module]:
    """``{'<layer>_<key>': module}`` for each attribute path in ``paths``, in every layer from ``skip_layers`` up."""
    sites = {}
    for i, layer in adapted_layers(backbone, skip_layers):
        for key, path in paths.items():
            try:
                sites[f"{i}_{key}"] = reduce(getattr, path.split("."), layer)
            except AttributeError as exc:
                raise ContinualError(
                    f"{field}: layer {i} of backbone '{backbone.name}' has no module '{path}'"
                ) from exc
    return sites


def named_sites(
    backbone, skip_layers: int, field: str, names: tuple[str, ...], kinds: tuple[type[nn.Module], ...]
) -> dict[str, nn.Module]:
    """Modules of type ``kinds`` whose last name is in ``names`` ('*' = all), keyed ``'<layer>_<path with _>'``.

    Every name must match in every adapted layer: a misspelt target is an error, not a silent no-op.
    """
    sites: dict[str, nn.Module] = {}
    for i, layer in adapted_layers(backbone, skip_layers):
        candidates: dict[str, nn.Module] = {p: m for p, m in layer.named_modules() if p and isinstance(m, kinds)}
        found = {path: m for path, m in candidates.items() if "*" in names or path.rsplit(".", 1)[-1] in names}
        missing = [n for n in names if n != "*" and not any(p.rsplit(".", 1)[-1] == n for p in found)]
        if missing:
            known = sorted({p.rsplit(".", 1)[-1] for p in candidates})
            raise ContinualError(
                f"{field}: {missing} name no {'/'.join(k.__name__ for k in kinds)} module in layer {i} "
                f"of backbone '{backbone.name}'; there: {known}"
            )
        sites.update({f"{i}_{path.replace('.', '_')}": m for path, m in found.items()})
    return sites


def layer_of(site: str) -> int:
    """The layer index a site name starts with."""
    return int(site.split("_", 1)[0])
