"""Shared fixtures: a tiny random BERT and tokenizer built here, and small task files. No downloads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from continual.backbone import Backbone
from continual.streams.demo_data import DEMO_TASKS, demo_examples

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    words = set()
    for task in DEMO_TASKS:
        for split in ("train", "test"):
            for text, _ in demo_examples(task, split):
                words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return SPECIAL + sorted(words)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with a word-level vocabulary of the demo data, saved to disk."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = _vocab()
    tokenizer = BertTokenizer(vocab={word: k for k, word in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_backbone(tiny_model_dir) -> Backbone:
    return Backbone.load(str(tiny_model_dir))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def demo_files(tmp_path) -> dict[str, dict[str, Path]]:
    """Two demo tasks written as jsonl files: {task: {"train": path, "test": path}}."""
    files = {}
    for task in ("banking", "travel"):
        files[task] = {
            split: write_jsonl(tmp_path / "data" / task / f"{split}.jsonl",
                               [{"text": t, "label": lab} for t, lab in demo_examples(task, split)])
            for split in ("train", "test")
        }
    return files
