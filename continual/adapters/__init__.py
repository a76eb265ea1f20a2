"""Our own small adapters (bottleneck, LoRA, prefix, BitFit) and a per-task, per-example routable bank."""

from continual.adapters.bank import AdapterBank, AdapterKind, describe, segments_for
from continual.adapters.bitfit import BitFitConfig
from continual.adapters.bottleneck import Bottleneck, BottleneckConfig
from continual.adapters.lora import LoRAConfig
from continual.adapters.prefix import PrefixConfig

__all__ = [
    "AdapterBank",
    "AdapterKind",
    "BitFitConfig",
    "Bottleneck",
    "BottleneckConfig",
    "LoRAConfig",
    "PrefixConfig",
    "describe",
    "segments_for",
]
