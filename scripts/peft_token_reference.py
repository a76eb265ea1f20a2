"""Token tasks against the plain recipe: ours (an adapter + token head per task) and peft's LoRA token classifier.

    .venv/bin/python scripts/peft_token_reference.py --data ../shared/data/fbtod \\
        [--domains alarm reminder weather] [--sentences 1800] [--epochs 2] [--ours random probe]
        [--reduction-factor 16] [--skip-peft]

Per fbtod domain, on the same first ``--sentences`` training sentences (``stream.max_per_class``), epochs,
batch size (32), learning rate (5e-3) and warm-up (6%), and the domain's whole test set:

- **peft**: ``AutoModelForTokenClassification`` (the packaged MiniLM) with a LoRA adapter on the query and
  value projections (r=8, alpha 16, dropout 0.1; the token classifier trained through ``modules_to_save``),
  trained with ``Trainer`` and ``DataCollatorForTokenClassification``; each word's tag at its first
  sub-token (the others ``-100``), as the transformers token-classification guide does;
- **ours**: ``learner=adapter_per_task`` (the default Pfeiffer adapter, width hidden / ``--reduction-factor``)
  with the task given, once per ``--ours`` value of ``learner.head_init``.

Both are scored by entity-level micro F1 with ``continual.entities`` (what runs log); peft's argmax tags
also by ``seqeval`` (``pip install seqeval``), which must agree. Ours decodes each sentence's tags as the best
valid BIO sequence (:func:`continual.entities.bio_decode`); peft's tags are scored both ways: by argmax per
word (``peft LoRA``, the guide's reference) and by the same decoding (``peft + BIO``). Needs ``pip install peft``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from continual.adapters import BottleneckConfig
from continual.entities import EntityCounts
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.learners.base import oracle_score
from continual.model.backbone import PACKAGED_MINILM, Backbone, resolve_name
from continual.model.training import TrainerConfig, token_targets
from continual.run.assemble import stream_file, stream_source
from continual.streams import Split, Task
from continual.streams.kinds.tokens import bio_tags, word_tags
from peft_reference import training_arguments

ROOT = Path(__file__).resolve().parent.parent
BATCH, LR, WARMUP = 32, 5e-3, 0.06


def _task(data: Path, domain: str, sentences: int) -> Task:
    """The domain's slot task with its first ``sentences`` training sentences. (``stream.max_per_class`` refuses a
    cap that leaves an entity type of the validation or test set out of training; here both methods simply
    miss those entities.)"""
    node = stream_file(ROOT / "conf/stream/fbtod_slots.yaml")
    node.update(data_dir=str(data), order=[f"{domain}_slots"])
    task = stream_source(node).load().tasks[0]
    train = task.train
    kept = Split(train.texts[:sentences], train.labels[:sentences], train.source, train.tags[:sentences])
    return dataclasses.replace(task, train=kept)


def _seqeval_f1(gold: list[np.ndarray], predicted: list[np.ndarray], tags: tuple[str, ...]) -> float | None:
    try:
        from seqeval.metrics import f1_score
    except ImportError:
        return None
    return float(f1_score([[tags[t] for t in g] for g in gold], [[tags[t] for t in p] for p in predicted]))


def peft_f1(backbone: Backbone, task: Task, epochs: int, seed: int) -> tuple[float, float, float | None, float]:
    """peft's entity F1 on the test set, its tags read by argmax (the guide's way) and by our BIO decoding; the
    argmax tags' F1 by seqeval; its training seconds."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForTokenClassification,
        DataCollatorForTokenClassification,
        Trainer,
    )
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    tags = bio_tags(task.labels)
    torch.manual_seed(seed)
    base = AutoModelForTokenClassification.from_pretrained(resolve_name(PACKAGED_MINILM), num_labels=len(tags))
    lora = LoraConfig(
        task_type=TaskType.TOKEN_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]
    )
    model = get_peft_model(base, lora)

    def dataset(split) -> tuple[Dataset, list[np.ndarray]]:
        tokens, starts = backbone.tokenize_words(list(split.texts), 128)
        labels = [token_targets(len(ids), first, gold).tolist() for ids, first, gold in zip(tokens, starts, split.tags)]
        rows = {"input_ids": tokens, "attention_mask": [[1] * len(t) for t in tokens], "labels": labels}
        return Dataset.from_dict(rows), starts

    train, _ = dataset(task.train)
    test, starts = dataset(task.test)
    collator = DataCollatorForTokenClassification(backbone.tokenizer)
    with tempfile.TemporaryDirectory() as out:
        args = training_arguments(out, epochs, BATCH, 128, LR, WARMUP, seed)
        start = time.perf_counter()
        Trainer(model=model, args=args, train_dataset=train, data_collator=collator).train()
        seconds = time.perf_counter() - start
        logits = Trainer(model=model, args=args, data_collator=collator).predict(test).predictions
    gold = [np.asarray(t) for t in task.test.tags]
    argmax, decoded = [], []  # each word's tag at its first sub-token; O for words cut off by truncation (none at 128)
    for i, first in enumerate(starts):
        scores = torch.as_tensor(logits[i]).float().log_softmax(-1).numpy()
        argmax.append(np.where(first >= 0, scores.argmax(-1)[np.maximum(first, 0)], 0))
        decoded.append(word_tags(scores, first)[0])
    types = len(task.labels)
    return _f1(gold, argmax, types), _f1(gold, decoded, types), _seqeval_f1(gold, argmax, tags), seconds


def _f1(gold: list[np.ndarray], predicted: list[np.ndarray], types: int) -> float:
    counts = EntityCounts()
    classes = np.arange(types)
    for g, p in zip(gold, predicted):
        counts.add_tags(g, classes, p, classes)
    return counts.micro_f1


def ours_f1(task: Task, epochs: int, seed: int, head_init: str, reduction: float) -> tuple[float, float]:
    """Our adapter's entity F1 on the test set with the task given, and its training seconds."""
    learner = AdapterPerTask(
        Backbone.load(),
        BottleneckConfig(reduction_factor=reduction),
        TrainerConfig(epochs=epochs, batch_size=BATCH, lr=LR, warmup_ratio=WARMUP),
        AdapterPerTaskConfig(progress=False, head_init=head_init),
        seed=seed,
    )
    report = learner.learn([task])
    return oracle_score(learner, 0, task, task.test), report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/fbtod")
    parser.add_argument("--domains", nargs="+", default=["alarm", "reminder", "weather"])
    parser.add_argument("--sentences", type=int, default=1800)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ours", nargs="+", default=["random", "probe"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reduction-factor", type=float, default=BottleneckConfig.reduction_factor)
    parser.add_argument("--skip-peft", action="store_true", help="ours only")
    args = parser.parse_args()
    print(f"{args.sentences} training sentences per domain, {args.epochs} epochs, batch {BATCH}, lr {LR}; entity F1")
    print(f"{'domain':<10} {'method':<14} {'F1':>6} {'seqeval':>8} {'train s':>8}")
    for domain in args.domains:
        task = _task(args.data, domain, args.sentences)
        if not args.skip_peft:
            f1, decoded, checked, seconds = peft_f1(Backbone.load(), task, args.epochs, args.seed)
            shown = "n/a" if checked is None else f"{100 * checked:.2f}"
            print(f"{domain:<10} {'peft LoRA':<14} {100 * f1:>6.2f} {shown:>8} {seconds:>8.1f}", flush=True)
            print(f"{domain:<10} {'peft + BIO':<14} {100 * decoded:>6.2f} {'':>8} {'':>8}", flush=True)
        for head_init in args.ours:
            f1, seconds = ours_f1(task, args.epochs, args.seed, head_init, args.reduction_factor)
            print(f"{domain:<10} {'ours ' + head_init:<14} {100 * f1:>6.2f} {'':>8} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
