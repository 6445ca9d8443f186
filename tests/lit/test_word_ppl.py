"""Word-level perplexity, token loss and bits per byte of PG-19 (docs/transformer_vq.md §4.4) on hand-made examples."""
from __future__ import annotations

import math

import pytest
import torch

from vqformer.data.pg19 import count_words
from vqformer.lit.metrics import TokenNLL, text_metrics, word_perplexity

# 12 whitespace-separated words; tabs, newlines and runs of spaces all separate, punctuation does not.
TEXT = "It was the best\tof times,\n it  was the worst of times.\n"


def test_count_words_by_hand():
    assert count_words(TEXT) == 12
    assert count_words("") == 0 and count_words(" \n\t ") == 0
    assert count_words("don't stop-me now") == 3
    assert count_words("naïve café — fin") == 4


def test_word_perplexity_by_hand():
    # Twelve words and a total NLL of 12·ln 30 nats: the model is as uncertain as a uniform choice of 30 words.
    assert word_perplexity(12 * math.log(30.0), 12) == pytest.approx(30.0, rel=1e-12)
    # The same NLL spread over fewer words is a worse (higher) word-level perplexity.
    assert word_perplexity(12 * math.log(30.0), 6) == pytest.approx(900.0, rel=1e-12)
    with pytest.raises(ValueError, match="n_words"):
        word_perplexity(1.0, 0)


def test_text_metrics_by_hand():
    # Say the text was cut into 20 tokens (19 pieces + EOS) with these per-token NLLs (nats).
    nll = torch.tensor([3.0, 1.0, 0.5, 2.0, 4.0, 0.25, 1.5, 2.5, 0.75, 3.5,
                        1.0, 1.0, 2.0, 0.5, 0.5, 3.0, 2.0, 1.0, 0.25, 0.25], dtype=torch.float64)
    total = float(nll.sum())                     # 30.5 nats
    n_bytes = len(TEXT.encode("utf-8"))          # 55 bytes, all ASCII
    assert total == 30.5 and n_bytes == 55
    m = text_metrics(total, n_tokens=20, n_bytes=n_bytes, n_words=count_words(TEXT))
    assert m["loss"] == pytest.approx(30.5 / 20)
    assert m["bpb"] == pytest.approx(30.5 / math.log(2) / 55)
    assert m["word_ppl"] == pytest.approx(math.exp(30.5 / 12))
    # Word-level ppl = token ppl raised to tokens/words (the conversion the paper's number needs).
    assert m["word_ppl"] == pytest.approx(math.exp(m["loss"]) ** (20 / 12))

    # Summing through the metric (two batches, padding masked out) gives the same mean loss.
    metric = TokenNLL()
    metric.update(nll[:7].sum(), 7)
    metric.update(nll[7:].sum(), 13)
    assert float(metric.compute()) == pytest.approx(m["loss"], rel=1e-15)


def test_utf8_bytes_not_characters():
    text = "naïve café"                               # 10 characters, 12 UTF-8 bytes
    m = text_metrics(12 * math.log(2), n_tokens=4, n_bytes=len(text.encode("utf-8")), n_words=count_words(text))
    assert m["bpb"] == pytest.approx(1.0)           # 12 ln 2 nats = 12 bits over 12 bytes
    assert m["word_ppl"] == pytest.approx(2.0 ** 6)
