"""Token tasks: BIO reading and repair, word-piece alignment, entity F1, tagging heads in streams, the hub."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from continual.entities import EntityCounts, as_classes, bio_decode, entities, valid_moves
from continual.errors import ContinualError
from continual.model.backbone import Backbone
from continual.streams.kinds.tokens import TOKENS, bio_tags, word_tags
from continual.streams.spec import StreamSpec
from continual.streams.tokens import read_token_file, repair_bio

from conftest import (
    SHARED,
    SLOT_TEMPLATES,
    main_in_process,
    one_error_line,
    slot_rows,
    slot_task_files,
    tiny_overrides,
    write_jsonl,
)


def ids(tags: list[str], types: tuple[str, ...]) -> list[int]:
    index = {t: k for k, t in enumerate(bio_tags(types))}
    return [index[t] for t in tags]


def test_entity_f1_is_conllevals():
    # seqeval's README example: one of two predicted entities is right, one of two gold ones found: F1 0.5
    types = ("MISC", "PER")
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    counts = EntityCounts()
    local = np.arange(len(types))
    for g, p in zip(gold, pred):
        counts.add(as_classes(entities(ids(g, types)), local), as_classes(entities(ids(p, types)), local))
    assert counts.micro_f1 == pytest.approx(0.5)
    assert counts.by_class({0: "MISC", 1: "PER"})["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    # an I- that continues nothing begins an entity; an I- of another type starts a new one
    assert entities(ids(["I-PER", "I-PER", "O", "B-PER", "I-MISC"], types)) == [(0, 2, 1), (3, 4, 1), (4, 5, 0)]
    assert repair_bio(("O", "I-PER", "I-PER", "B-MISC", "I-PER")) == (("O", "B-PER", "I-PER", "B-MISC", "B-PER"), 2)


def is_valid_bio(tags: np.ndarray) -> bool:
    follows, starts = valid_moves(int(tags.max()) + 1 if len(tags) else 1)
    return len(tags) == 0 or (starts[tags[0]] and all(follows[a, b] for a, b in zip(tags[:-1], tags[1:])))


def test_bio_decoding_is_the_best_valid_sequence():
    rng = np.random.default_rng(0)
    types = ("date", "city")
    for words in range(5):
        for _ in range(20):
            scores = np.log(rng.dirichlet(np.ones(5), size=words)) if words else np.zeros((0, 5))
            decoded = bio_decode(scores)
            assert is_valid_bio(decoded) and decoded.dtype == np.int64
            paths = [np.asarray(p, dtype=np.int64) for p in itertools.product(range(5), repeat=words)]
            valid = [p for p in paths if is_valid_bio(p)]
            best = max(valid, key=lambda p: scores[np.arange(words), p].sum())
            assert scores[np.arange(words), decoded].sum() == pytest.approx(scores[np.arange(words), best].sum())
            if is_valid_bio(scores.argmax(-1)):  # a valid argmax is the answer
                assert decoded.tolist() == scores.argmax(-1).tolist()
    # argmax reads "O I-date I-date" (an entity that begins with I-); the best valid path begins it at B-date
    probs = np.array([[0.5, 0.45, 0.01, 0.02, 0.02], [0.1, 0.2, 0.6, 0.05, 0.05], [0.1, 0.1, 0.7, 0.05, 0.05]])
    assert bio_decode(np.log(probs)).tolist() == ids(["B-date", "I-date", "I-date"], types)
    # a lone I- of another type after B-city: the best valid path ends the city there
    probs = np.array([[0.1, 0.05, 0.05, 0.7, 0.1], [0.3, 0.05, 0.6, 0.0, 0.05]])
    assert bio_decode(np.log(probs + 1e-9)).tolist() == ids(["B-city", "O"], types)


def test_word_tags_read_first_sub_tokens_and_tag_cut_off_words_o():
    scores = np.log(np.array([[0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]))
    # words start at tokens 0 and 3; the third word was cut off by truncation
    tags, confidence = word_tags(scores, np.array([0, 3, -1]))
    assert tags.tolist() == [1, 2, 0]
    assert confidence.tolist() == pytest.approx([0.8, 0.8, 0.0])


@pytest.mark.skipif(not (SHARED / "fbtod").is_dir(), reason="shared fbtod data not present")
def test_entity_f1_equals_seqevals_on_every_fbtod_test_split():
    """Gold tags of each domain's test split against copies with random tags (invalid BIO included), scored by
    our scorer and by seqeval's default mode: equal micro F1, and equal F1 per type."""
    seqeval = pytest.importorskip("seqeval.metrics")
    from continual.run.assemble import stream_file, stream_source

    path = Path(__file__).resolve().parents[2] / "conf/stream/fbtod_slots.yaml"
    node = {**stream_file(path), "data_dir": str(SHARED / "fbtod")}
    rng = np.random.default_rng(0)
    for task in stream_source(node).load().tasks:
        tags = bio_tags(task.labels)
        gold = [np.asarray(t) for t in task.test.tags]
        for rate in (0.05, 0.3):
            predicted = [np.where(rng.random(len(g)) < rate, rng.integers(0, len(tags), len(g)), g) for g in gold]
            counts = EntityCounts()
            local = np.arange(len(task.labels))
            for g, p in zip(gold, predicted):
                counts.add_tags(g, local, p, local)
            as_text = [[[tags[t] for t in sentence] for sentence in side] for side in (gold, predicted)]
            assert counts.micro_f1 == pytest.approx(seqeval.f1_score(*as_text), abs=1e-12), task.name
            theirs = seqeval.classification_report(*as_text, output_dict=True, zero_division=0)
            ours = counts.by_class(dict(enumerate(task.labels)))
            for name in task.labels:
                assert ours[name]["f1"] == pytest.approx(theirs.get(name, {"f1-score": 0.0})["f1-score"], abs=1e-12)


def test_jsonl_and_conll_sentences(tmp_path, caplog):
    rows = [{"tokens": ["wake", "me", "at", "7"], "tags": ["O", "O", "O", "I-datetime"]}]
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        ((words, tags),) = read_token_file(jsonl, "tokens", "tags", "here")
    assert tags == ("O", "O", "O", "B-datetime") and words == ("wake", "me", "at", "7")
    assert "1 I- tags without their B- were read as B- (first: " in caplog.text and "a.jsonl line 1" in caplog.text
    conll = tmp_path / "a.conll"
    conll.write_text(  # CoNLL-2003 columns: token, POS, chunk, entity
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
    )
    assert read_token_file(conll, "tokens", None, "here", "conll") == [
        (("EU", "rejects"), ("B-ORG", "O")),
        (("Peter", "Blackburn"), ("B-PER", "I-PER")),
    ]
    assert read_token_file(conll, "tokens", None, "here", "conll", tag_column=2)[0][1] == ("B-NP", "B-VP")
    with pytest.raises(ContinualError, match="a.conll line 3 has the tag 'NNP'; expected BIO tags"):
        read_token_file(conll, "tokens", None, "here", "conll", tag_column=1)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"tokens": ["a", "b"], "tags": ["O"]}, "line 2 has 2 tokens and 1 tags; expected one tag per token"),
        ({"tokens": [], "tags": []}, "line 2 is an empty sentence"),
        ({"tokens": ["a"], "tags": ["PER"]}, "line 2 has the tag 'PER'; expected BIO tags"),
        (
            {"tokens": ["a b"], "tags": ["O"]},
            "line 2 has the token 'a b'; tokens must be non-empty, without whitespace",
        ),
        ({"tokens": "a b", "tags": ["O"]}, "field 'tokens' of "),
        ({"words": ["a"], "tags": ["O"]}, "'tokens' is not a field of"),
    ],
)
def test_bad_sentences_are_one_line_naming_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["ok"], "tags": ["B-x"]}, row])
    with pytest.raises(ContinualError) as err:
        read_token_file(path, "tokens", "tags", "task 'x'")
    assert message in str(err.value) and "t.jsonl" in str(err.value) and "\n" not in str(err.value)


def test_conll_and_spec_errors(tmp_path):
    bad = tmp_path / "b.conll"
    bad.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(ContinualError, match=r"b.conll line 2 has 1 columns; expected a token and its tag"):
        read_token_file(bad, "tokens", None, "here", "conll")
    base = {"name": "s", "train": "a.jsonl", "test": "a.jsonl", "type": "tokens"}
    for extra, message in [
        ({}, "a task of type tokens needs field 'tags_field'"),
        ({"type": "spans"}, "field 'type' must be one of ['sequence', 'tokens']"),
        ({"tags_field": "tags", "labels": ["x"]}, "a token task's labels are its entity types"),
        ({"type": "sequence", "format": "conll"}, "format conll holds tagged tokens; set type: tokens"),
    ]:
        with pytest.raises(ContinualError, match=message.replace("[", r"\[").replace("]", r"\]")):
            StreamSpec.from_dict({"name": "x", "tasks": [{**base, **extra}]})


def test_a_token_task_needs_entities_to_learn_and_to_score():
    from continual.streams.tokens import build_token_task

    tagged, plain = (("wake", "me"), ("O", "B-time")), (("hello",), ("O",))
    with pytest.raises(ContinualError, match="task 'x': the train split has no entities"):
        build_token_task("x", [plain], [tagged])
    with pytest.raises(ContinualError, match="the test split has no entities .every tag is O.: its F1 could not"):
        build_token_task("x", [tagged], [plain])


def test_token_task_from_a_stream_file(tmp_path):
    entries = slot_task_files(tmp_path, ("trip_slots",))
    (task,) = StreamSpec.from_dict({"name": "x", "tasks": entries}).load(tmp_path).tasks
    assert task.kind is TOKENS and task.labels == ("city", "date")
    assert bio_tags(task.labels) == ("O", "B-city", "I-city", "B-date", "I-date") and task.routing_classes == 1
    assert task.outputs == 5
    assert len(task.train) + len(task.validation) == 120 and len(task.test) == 30
    text, tags = task.test.texts[0], task.test.tags[0]
    assert len(text.split()) == len(tags) and set(task.test.labels.tolist()) == {0}


def test_first_sub_token_carries_the_tag_and_truncation_is_counted(caplog):
    from continual.model.training import token_targets

    backbone = Backbone.load()  # the packaged MiniLM: real word pieces
    tokens, starts = backbone.tokenize_words(["set alarm for 7:30 tomorrow"], 32)
    pieces = backbone.tokenizer.convert_ids_to_tokens(tokens[0])
    assert pieces == ["[CLS]", "set", "alarm", "for", "7", ":", "30", "tomorrow", "[SEP]"]
    assert starts[0].tolist() == [1, 2, 3, 4, 7]
    targets = token_targets(len(tokens[0]), starts[0], np.array([0, 0, 0, 3, 4]))
    assert targets.tolist() == [-100, 0, 0, 0, 3, -100, -100, 4, -100]  # later pieces and specials ignored

    with caplog.at_level(logging.WARNING):
        _, cut = TOKENS.encode(backbone, ["set alarm for 7:30 tomorrow", "stop"], 5, "task 'x' test")
    assert cut is not None and cut[0].tolist() == [1, 2, 3, -1, -1] and cut[1].tolist() == [1]
    assert "task 'x' test: 1 of 2 sentences are longer than trainer.max_length=5 tokens" in caplog.text


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory, tiny_model_dir):
    """A finished stream of two token tasks and one sequence task of the demo, with the prototype router."""
    from conftest import demo_task_files, run_in_process

    root = tmp_path_factory.mktemp("hub")
    (demo,) = demo_task_files(root, ("travel",)).items()
    tasks = [*slot_task_files(root), {"name": demo[0], "train": str(demo[1]["train"]), "test": str(demo[1]["test"])}]
    (root / "conf" / "stream").mkdir(parents=True)
    (root / "conf" / "stream" / "hub.yaml").write_text(yaml.safe_dump({"name": "hub", "tasks": tasks}))
    overrides = tiny_overrides(
        root, tiny_model_dir, "router=prototype", "trainer.epochs=10", "trainer.lr=0.02", "adapter.bottleneck_dim=16"
    )
    result = run_in_process(root / "run", ["stream=hub", *overrides], config_dir=root / "conf", launch_dir=root)
    return root, result


def test_a_stream_with_token_tasks_scores_them_by_entity_f1(hub_run):
    root, result = hub_run
    run = root / "run"
    oracle = result.state.oracle_R
    assert oracle[-1, 0] > 0.9 and oracle[-1, 1] > 0.9, oracle  # the taggers learned their slots
    assert np.allclose(oracle[0, 0], oracle[-1, 0])  # frozen: BWT 0 with the oracle
    scores = json.loads((run / "entity_f1.json").read_text())
    assert set(scores["tasks"]) == set(SLOT_TEMPLATES) and scores["after_task"] == "travel"
    assert set(scores["tasks"]["trip_slots"]["by_type"]) == {"city", "date"}
    from conftest import histories, mlflow_runs

    (mlrun,) = mlflow_runs(f"sqlite:///{root}/mlflow.db")
    keys = histories(f"sqlite:///{root}/mlflow.db", mlrun.info.run_id)
    assert {"f1/trip_slots", "oracle_f1/meal_slots", "acc/travel", "val_f1/trip_slots"} <= set(keys)
    assert "acc/trip_slots" not in keys
    from continual.commands.report import build_report
    from continual.tracking.runs import RunStore

    report = build_report(RunStore(f"sqlite:///{root}/mlflow.db"), "continual")
    assert report.note().endswith("token tasks scored by entity F1 in R: meal_slots, trip_slots")
    assert "scored by F1" not in (run / "results.json").read_text()  # the summary line, not the results
    assert (run / "adapters" / "00_trip_slots.safetensors").is_file()


def test_routing_chooses_among_tasks_of_the_evaluated_type(hub_run):
    from continual.routers.base import Routing, restrict

    routing = Routing(np.array([2, 2, -1]), np.array([[0.1, 0.5, 0.9], [0.6, 0.1, 0.9], [0.0, 0.0, 0.0]]))
    assert restrict(routing, np.array([True, True, False])).tolist() == [1, 0, -1]
    _, result = hub_run
    routed = result.confusion[:2, 2]  # token-task texts never go to the sequence task
    assert routed.tolist() == [0, 0]


def test_predict_returns_entity_spans_and_the_hub_all_tasks(hub_run, monkeypatch, capsys):
    root, _ = hub_run
    text = "book  a flight to   rome next friday"
    proc = main_in_process(
        monkeypatch, capsys, "predict", root / "run", "--text", text, "--type", "tokens", "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert record["task"] == "trip_slots" and record["label"] is None
    found = {(e["type"], e["text"]) for e in record["entities"]}
    assert found == {("city", "rome"), ("date", "next friday")}
    for entity in record["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"] and 0 < entity["confidence"] <= 1
    proc = main_in_process(monkeypatch, capsys, "predict", root / "run", "--text", text, "--all-tasks", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    (hub,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert set(hub["tasks"]) == {"trip_slots", "meal_slots", "travel"}
    assert "entities" in hub["tasks"]["meal_slots"] and "label" in hub["tasks"]["travel"]
    assert hub["routes"] == {"tokens": "trip_slots", "sequence": "travel"}
    bad = main_in_process(
        monkeypatch, capsys, "predict", root / "run", "--text", text, "--all-tasks", "--task", "travel"
    )
    assert "--all-tasks runs every task" in bad.stderr


def test_mixed_batches_tag_as_single_task_batches(hub_run, tiny_model_dir):
    from continual.serving.predictor import Query, SavedBank

    root, _ = hub_run
    predictor = SavedBank(root / "run").load()
    texts = ["make curry for dinner tonight", "book a flight to paris monday", "make stew for dinner friday"]
    mixed = list(predictor.predict([Query(t, task) for t, task in zip(texts, ["meal_slots", "trip_slots", "travel"])]))
    alone = [
        next(predictor.predict([Query(t, task)])) for t, task in zip(texts, ["meal_slots", "trip_slots", "travel"])
    ]
    # padded with longer texts, a row's numbers may move in the last float bits: confidences within 1e-5
    for m, a in zip(mixed, alone):
        assert {**m, "confidence": 0} == {**a, "confidence": 0}
        assert m.get("confidence", 0) == pytest.approx(a.get("confidence", 0), abs=1e-5)
    hub = list(predictor.predict_all(texts))
    assert [h["tasks"]["trip_slots"] for h in hub][1]["entities"] == mixed[1]["entities"]


def test_single_head_learners_refuse_token_tasks(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # Hydra makes its run folder before the refusal: not in the repository
    (tmp_path / "conf" / "stream").mkdir(parents=True)
    spec = {"name": "slots", "tasks": slot_task_files(tmp_path)}
    (tmp_path / "conf" / "stream" / "slots.yaml").write_text(yaml.safe_dump(spec))
    proc = main_in_process(
        monkeypatch,
        capsys,
        "--config-dir",
        tmp_path / "conf",
        "stream=slots",
        "+method=replay",
        *tiny_overrides(tmp_path, tiny_model_dir),
    )
    assert "are token tasks (type: tokens), which learner=adapter_per_task tags" in one_error_line(proc)


def test_a_test_split_with_an_entity_type_train_lacks_is_one_line(tmp_path):
    entries = slot_task_files(tmp_path, ("trip_slots",))
    rows = [{"tokens": ["fly", "on", "monday"], "tags": ["O", "O", "B-weekday"]}] + slot_rows("trip_slots", 5, 3)
    write_jsonl(Path(entries[0]["test"]), rows)
    with pytest.raises(ContinualError, match=r"test split has entity types that never occur in train: \['weekday'\]"):
        StreamSpec.from_dict({"name": "x", "tasks": entries}).load(tmp_path)


def test_validation_entities_of_a_type_train_lacks_are_tagged_o_and_said(tmp_path, caplog):
    """fbtod's alarm validation holds one entity of a type its train split never shows: the stream still loads."""
    entries = slot_task_files(tmp_path, ("trip_slots",))
    validation = [{"tokens": ["fly", "on", "monday"], "tags": ["O", "O", "B-weekday"]}] + slot_rows("trip_slots", 5, 4)
    entries[0]["validation"] = str(write_jsonl(tmp_path / "validation.jsonl", validation))
    with caplog.at_level(logging.WARNING):
        (task,) = StreamSpec.from_dict({"name": "x", "tasks": entries}).load(tmp_path).tasks
    assert task.labels == ("city", "date") and len(task.validation) == 6
    index = task.validation.texts.index("fly on monday")
    assert task.validation.tags[index].tolist() == [0, 0, 0]
    assert "validation: 1 entities of types that never occur in train (weekday) are tagged O" in caplog.text
