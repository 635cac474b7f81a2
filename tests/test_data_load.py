"""Reading data files: the CSV delimiter is detected, a broken JSONL line is named by its number."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import sentiment_frame
from tests.test_cli_errors import assert_user_error, run_cli
from tunelab.config import ExtractiveQAConfig, TrainConfig, load_settings
from tunelab.data import load_source
from tunelab.data.split import load_splits
from tunelab.errors import TunelabError

# Texts with a comma in every row: the comma must not be taken for the delimiter.
COMMA_TEXTS = [f"lovely, friendly staff {i}" for i in range(12)]


def write_rows(path, header: str, rows: list[str]):
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("delimiter", [";", "|", "\t"])
def test_a_csv_is_read_with_the_delimiter_it_uses(tmp_path, delimiter):
    labels = ["good" if i % 2 else "bad" for i in range(len(COMMA_TEXTS))]
    path = write_rows(tmp_path / "reviews.csv", f"text{delimiter}label", [f"{t}{delimiter}{lab}" for t, lab in zip(COMMA_TEXTS, labels)])
    frame = load_source(path)
    assert frame["text"].tolist() == COMMA_TEXTS
    assert frame["label"].tolist() == labels


def test_the_sniffer_decides_when_the_header_holds_several_delimiters(tmp_path):
    # ';'-separated with decimal commas, and a quoted column name holding a comma.
    path = write_rows(
        tmp_path / "prices.csv",
        '"price, eur";text;label',
        ['"3,50";nice, cheap;good', "12;too dear;bad", '"0,99";fine;good', "7;awful, cold;bad"],
    )
    frame = load_source(path)
    assert frame["text"].tolist() == ["nice, cheap", "too dear", "fine", "awful, cold"]
    assert frame["label"].tolist() == ["good", "bad", "good", "bad"]


def test_comma_tsv_and_one_column_files_read_as_before(tmp_path):
    frame = sentiment_frame(5)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    frame[["text"]].to_csv(tmp_path / "texts.csv", index=False)
    for name in ("d.csv", "d.tsv"):
        pd.testing.assert_frame_equal(load_source(tmp_path / name), frame)
    assert load_source(tmp_path / "texts.csv", label_col=None)["text"].tolist() == frame["text"].tolist()


AMBIGUOUS = ("id;text,label", ["1;good, fine,pos", "2;bad;neg", "3;ok"])


def test_an_ambiguous_delimiter_is_named_with_the_flag_that_sets_it(tmp_path):
    path = write_rows(tmp_path / "messy.csv", *AMBIGUOUS)
    with pytest.raises(TunelabError) as caught:
        load_source(path)
    assert "looks ';'-separated" in caught.value.message and str(path) in caught.value.message
    assert "--delimiter ';'" in caught.value.hint and "delimiter:" in caught.value.hint
    # Once set, the delimiter is used as given, and pandas names the row that does not fit it.
    with pytest.raises(TunelabError, match="delimiter ';'.*Expected 2 fields in line 3, saw 3"):
        load_source(path, delimiter=";")


def test_the_delimiter_setting_reaches_every_data_file(tmp_path):
    frame = sentiment_frame(6)
    frame.to_csv(tmp_path / "train.csv", index=False, sep="|")
    frame.to_csv(tmp_path / "eval.csv", index=False, sep="|")
    settings = load_settings(TrainConfig, overrides={"data": str(tmp_path / "train.csv"), "eval_data": str(tmp_path / "eval.csv"), "delimiter": "|"})
    splits, _ = load_splits(settings)
    assert len(splits["eval"]) == len(frame) and set(splits["train"]["label"]) == set(frame["label"])
    assert load_settings(TrainConfig, overrides={"delimiter": "tab"}).delimiter == "\t"
    with pytest.raises(TunelabError, match="setting 'delimiter'"):
        load_settings(TrainConfig, overrides={"delimiter": ":"})


def test_an_extractive_qa_csv_is_read_with_its_delimiter(tmp_path):
    from tunelab.training.extractive_qa import load_qa_frame

    path = write_rows(tmp_path / "qa.csv", "question;context;answer", ["What colour?;The sky, today, is blue.;blue"])
    frame = load_qa_frame(str(path), ExtractiveQAConfig(data=str(path)))
    assert frame[["question", "context", "answer"]].values.tolist() == [["What colour?", "The sky, today, is blue.", "blue"]]


def write_jsonl(path, broken: dict[int, str]):
    lines = [json.dumps({"text": f"text {i}", "label": "a" if i % 2 else "b"}) for i in range(1, 11)]
    for number, line in broken.items():
        lines[number - 1] = line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_broken_jsonl_line_is_named_by_its_number(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", {7: '{"text": "fine" "label": "a"}'})
    with pytest.raises(TunelabError) as caught:
        load_source(path)
    assert caught.value.message == f"{path} line 7 is not valid JSON: Expecting ',' delimiter (column 17)"
    path = write_jsonl(tmp_path / "data.jsonl", {3: '["text", "label"]'})
    with pytest.raises(TunelabError, match="line 3 is a JSON array, not an object"):
        load_source(path)


def test_jsonl_reads_as_before(tmp_path):
    frame = sentiment_frame(5)
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    with open(tmp_path / "d.jsonl", "a", encoding="utf-8") as handle:
        handle.write("\n\n")  # trailing blank lines are not rows
    pd.testing.assert_frame_equal(load_source(tmp_path / "d.jsonl"), frame)


def test_read_raw_is_public_and_keeps_the_files_own_columns(tmp_path):
    from tunelab.data.load import read_raw

    path = write_rows(tmp_path / "qa.csv", "question;context;answer", ["Who?;Ann did.;Ann"])
    assert list(read_raw(path)) == ["question", "context", "answer"]


# The CLI: one line on stderr, exit code 2; and the flag the message names exists.


def test_cli_ambiguous_delimiter_then_the_flag(tmp_path):
    path = write_rows(tmp_path / "messy.csv", "text;label;note, free", ["good;pos;ok, fine", "bad;neg", "fine, ok;neg", "dull, grey;neg;no"])
    assert_user_error(run_cli("data", "inspect", path, "--model", ""), "looks ';'-separated", "--delimiter ';'")
    result = run_cli("data", "inspect", path, "--model", "", "--delimiter", ";", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["class_counts"] == {"pos": 1, "neg": 3}


def test_cli_train_takes_the_delimiter(tmp_path):
    assert_user_error(run_cli("train", "--data", tmp_path / "d.csv", "--delimiter", ":"), "setting 'delimiter'")


def test_cli_broken_jsonl_line(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", {7: '{"text": "fine" "label": "a"}'})
    assert_user_error(run_cli("data", "inspect", path, "--model", ""), "data.jsonl line 7 is not valid JSON: Expecting ',' delimiter (column 17)")
