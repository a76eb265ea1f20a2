"""The peer reference for scripts/bench.py: the same stream written the way peft and transformers document it.

One ``PeftModel`` over ``AutoModelForSequenceClassification`` holds a LoRA adapter per task (query and
value projections, rank 8, alpha 16, dropout 0.1; the classifier is saved per adapter through
``modules_to_save``). Each task is trained with ``Trainer`` and ``DataCollatorWithPadding`` for the
same epochs, batch size and warm-up as ours, and after every task every seen task is evaluated with
``Trainer.predict`` (the quadratic evaluation that tutorials show). Nothing here is tuned for speed:
it is what a user following the peers' documentation would run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class PeftResult:
    """Wall time split into training and evaluation, the accuracy matrix, and the model (for inference benchmarks)."""

    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    R: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    model: object = None
    tokenizer: object = None
    names: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.eval_seconds

    @property
    def acc(self) -> float:
        return float(np.mean(self.R[-1]))


def training_arguments(
    out: str, epochs: int, batch_size: int, eval_batch_size: int, lr: float, warmup_ratio: float, seed: int
):
    """``TrainingArguments`` as the guides write them, on the CPU, with nothing saved or logged."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        learning_rate=lr,
        warmup_steps=warmup_ratio,  # below 1: a share of the steps (transformers 5)
        weight_decay=0.0,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
    )


def run_peft_stream(
    model_path: str,
    tasks: Sequence,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    lr: float,
    warmup_ratio: float,
    max_length: int,
    seed: int = 0,
) -> PeftResult:
    """Train a LoRA adapter per task with ``Trainer``; evaluate every seen task after every task."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
    )
    from transformers import (
        logging as hf_logging,
    )

    hf_logging.set_verbosity_error()
    num_labels = {len(t.labels) for t in tasks}
    if len(num_labels) != 1:
        raise SystemExit(
            "the peft reference shares one classifier shape across adapters: tasks need equal label counts"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels.pop())

    def dataset(split) -> Dataset:
        ds = Dataset.from_dict({"text": list(split.texts), "label": [int(x) for x in split.labels]})
        return ds.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
            batched=True,
            remove_columns=["text"],
        )

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]
    )
    result = PeftResult(R=np.full((len(tasks), len(tasks)), np.nan), tokenizer=tokenizer)
    collator = DataCollatorWithPadding(tokenizer)
    model = None
    with tempfile.TemporaryDirectory() as out:
        args = training_arguments(out, epochs, batch_size, eval_batch_size, lr, warmup_ratio, seed)
        tests = [dataset(t.test) for t in tasks]
        for i, task in enumerate(tasks):
            start = time.perf_counter()
            name = f"t{i}_{task.name}"
            if model is None:
                model = get_peft_model(base, lora, adapter_name=name)
            else:
                model.add_adapter(name, lora)
                model.set_adapter(name)  # only the active adapter is trainable
            result.names.append(name)
            Trainer(model=model, args=args, train_dataset=dataset(task.train), data_collator=collator).train()
            result.train_seconds += time.perf_counter() - start
            start = time.perf_counter()
            evaluator = Trainer(model=model, args=args, data_collator=collator)
            for j in range(i + 1):
                model.set_adapter(result.names[j])
                out_j = evaluator.predict(tests[j])
                result.R[i, j] = float(np.mean(np.asarray(out_j.predictions).argmax(-1) == out_j.label_ids))
            model.set_adapter(name)
            result.eval_seconds += time.perf_counter() - start
    assert model is not None, "the stream has at least one task"
    model.eval()
    result.model = model
    return result
