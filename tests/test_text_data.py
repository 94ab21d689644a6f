"""Packed text and chat rows, with a word-level tokenizer built for the tests."""

import json

import pytest
import torch

from distill.data.text import ChatExamples, PackedText, read_documents
from tests.text_models import chat_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


def test_read_documents(tmp_path):
    (tmp_path / "a.txt").write_text("the cat sat\n\non the mat\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "a dog ran"})
        + "\n"
        + json.dumps({"prompt": "what did the cat do", "completion": "it sat"})
        + "\n"
    )
    records = read_documents([tmp_path / "a.txt", tmp_path / "b.jsonl"])
    assert [r.get("text") for r in records[:3]] == ["the cat sat", "on the mat", "a dog ran"]
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_documents(tmp_path / "bad.jsonl")


def test_packed_text_labels_are_the_next_tokens(tokenizer):
    records = [{"text": "the cat sat on the mat"}, {"text": "a dog ran far"}]
    data = PackedText(records, tokenizer, seq_len=4)
    stream = tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    stream_2 = tokenizer("a dog ran far", add_special_tokens=False)["input_ids"]
    assert len(data) == 2  # 6 + 1 + 4 + 1 = 12 tokens -> two blocks of 5
    row = data[0]
    assert row["input_ids"].tolist() == stream[:4]
    assert row["labels"].tolist() == stream[1:5]
    assert bool(row["loss_mask"].all())
    eos = tokenizer.eos_token_id
    # the second block: the last word of document 1, EOS, then document 2 begins
    assert data[1]["input_ids"].tolist() == [stream[5], eos, *stream_2[:2]]
    assert data[1]["labels"].tolist() == [eos, *stream_2[:3]]


def test_chat_rows_score_only_the_answer(tokenizer):
    records = [
        {
            "messages": [
                {"role": "user", "content": "what did the cat do"},
                {"role": "assistant", "content": "it sat"},
            ]
        }
    ]
    data = ChatExamples(records, tokenizer, seq_len=16)
    row = data[0]
    scored = row["labels"][row["loss_mask"]].tolist()
    answer = tokenizer("it sat <|end|>", add_special_tokens=False)["input_ids"]
    assert scored == answer
    assert row["input_ids"].shape == (16,) and int(row["attention_mask"].sum()) < 16
    assert torch.equal(
        row["labels"][~row["loss_mask"]], torch.full_like(row["labels"][~row["loss_mask"]], -100)
    )
    with pytest.raises(ValueError, match="assistant"):
        ChatExamples([{"messages": [{"role": "user", "content": "the"}]}], tokenizer, 8)


def test_jsonl_rows_may_hold_unicode_line_separators(tmp_path):
    """JSON leaves U+2028 / U+0085 unescaped; they must not split a row in two."""
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "one\u2028line"}, {"text": "two\x85lines"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    assert read_documents(path) == rows


@pytest.mark.e2e
def test_the_tests_wordpiece_tokenizer_is_the_same_in_every_process(text_file, tokenizer_dir):
    """The tiny-model tests (and the workers of ``pytest -n 2``) must see one vocabulary:
    the one another process builds from the same text is this one, byte for byte."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    for k in range(2):
        folder = tokenizer_dir.parent / f"again-{k}"
        code = (
            "import sys; sys.path.insert(0, sys.argv[3]); from tests.text_models import "
            "wordpiece; wordpiece(sys.argv[1], sys.argv[2])"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(text_file), str(folder), str(root)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
        assert vocab == json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
