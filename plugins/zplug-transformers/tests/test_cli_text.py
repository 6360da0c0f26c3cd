"""``zplug explain-text`` end to end on tiny saved models: terminal, HTML, JSON, files, errors."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from zplug_transformers import testing

from zplug.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny GPT-2 (causal LM) and BERT (classifier) folders written by save_pretrained, with a tokenizer."""
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for family in ("gpt2", "bert"):
        model = testing.tiny(family, dtype=torch.float32)
        folder = root / family
        model.save_pretrained(folder)
        testing.word_tokenizer().save_pretrained(folder)
        folders[family] = folder
    return folders


def test_a_prompt_is_printed_written_and_matches_the_api(saved, tmp_path, capsys):
    from zplug_transformers import explain_tokens

    out = tmp_path / "out"
    assert main(["explain-text", "--model", str(saved["gpt2"]), "--text", "the cat sat on the", "--out", str(out),
                 "--preset", "cp_lrp", "--color", "never"]) == 0
    printed, err = capsys.readouterr()
    header, body = printed.splitlines()[:2]
    assert re.fullmatch(r"target '.+' \(logit -?[0-9.e+-]+\), relevance sum -?[0-9.e+-]+, cp_lrp", header)
    assert [t.split("[")[0] for t in body.split(" ")] == ["the", "cat", "sat", "on", "the"]
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "prompt-001.html", "prompt-001.json"]
    assert err.endswith("wrote 3 files to " + str(out) + "/ (index.html shows every prompt)\n")
    record = json.loads((out / "prompt-001.json").read_text())
    model = type(testing.tiny("gpt2", dtype=torch.float32)).from_pretrained(saved["gpt2"]).eval()
    expected = explain_tokens(model, "the cat sat on the", tokenizer=testing.word_tokenizer(), preset="cp_lrp")
    values = [t["relevance"] for t in record["tokens"]]
    assert values == pytest.approx(expected.relevance[0].tolist(), rel=1e-5, abs=1e-7)
    assert record["logit"] == pytest.approx(float(expected.logit[0]), rel=1e-6)
    assert math.isclose(record["relevance_sum"], math.fsum(values))
    page = (out / "prompt-001.html").read_text()
    assert page.count('class="tok"') == 5 and "cp_lrp" in page


def test_prompts_from_a_file_and_colours_in_the_terminal(saved, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat\n\na dog ran to\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["explain-text", "--model", str(saved["gpt2"]), "--file", str(prompts), "--out", str(out),
                 "--color", "always"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\x1b[48;2;178;24;43m") >= 2 * 2  # each prompt: its most relevant token and the legend
    assert sorted(p.name for p in out.iterdir()) == [
        "index.html", "prompt-001.html", "prompt-001.json", "prompt-002.html", "prompt-002.json"
    ]
    assert (out / "index.html").read_text().count('class="prompt"') == 2


def test_a_classifier_explains_the_class_given_by_label(saved, tmp_path, capsys):
    assert main(["explain-text", "--model", str(saved["bert"]), "--text", "the dog is big", "--target", "2",
                 "--no-files", "--color", "never"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("target 'LABEL_2' (logit ")


def test_an_existing_output_folder_is_kept_unless_overwrite(saved, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = ["explain-text", "--model", str(saved["gpt2"]), "--text", "the cat", "--out", str(out), "--color", "never"]
    assert main(args) == 2
    assert "is not empty (1 entry, e.g. 'mine.txt')" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "keep me" and (out / "prompt-001.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "zplug: error: give a prompt with --text TEXT or a file of prompts with --file FILE"),
        (["--text", "the cat", "--target", "zebra"],
         "zplug: error: target 'zebra' is not a token of the tokenizer's vocabulary"),
        (["--file", "missing.txt"], "zplug: error: --file 'missing.txt' does not exist or is not a file"),
    ],
)
def test_mistakes_are_one_line(saved, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["explain-text", "--model", str(saved["gpt2"]), "--no-files", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_a_model_that_is_not_on_disk_is_never_downloaded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["explain-text", "--model", "no-such-org/no-such-model", "--text", "hi", "--no-files"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zplug: error: --model 'no-such-org/no-such-model': cannot read its config.json")
    assert "zplug never downloads" in err and len(err.strip().splitlines()) == 1
