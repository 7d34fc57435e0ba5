"""course/lm.py: the tiny language model, its text, training and decoding."""

import math

import pytest
import torch

from course import lm


@pytest.fixture(scope="module")
def shipped():
    return lm.load_model()


def test_tokenizer_round_trip_and_a_clear_error_for_unknown_characters():
    tok = lm.CharTokenizer("hello world")
    assert tok.decode(tok.encode("world hello")) == "world hello"
    with pytest.raises(ValueError, match="never saw"):
        tok.encode("héllo")
    assert lm.to_ascii("a · b → c ✔") == "a - b -> c "


def test_the_corpus_ships_and_splits_without_overlap():
    text = lm.load_corpus()
    train, held = lm.split_corpus(text)
    assert len(text) > 100_000 and len(train) + len(held) == len(text)
    assert 0.08 < len(held) / len(text) < 0.12
    assert all(32 <= ord(c) < 127 or c == "\n" for c in text)


def test_the_shipped_model_learned_the_text(shipped):
    model, tokenizer, losses = shipped
    _, held = lm.split_corpus(lm.load_corpus())
    scores = lm.evaluate(model, tokenizer, held)
    # uniform guessing costs log(vocab) ~ 4.6 nats a character
    assert scores["loss"] < 0.5 * math.log(tokenizer.vocab_size) and scores["accuracy"] > 0.45
    assert losses[-1] < losses[0] / 2


def test_training_lowers_the_loss():
    config = lm.LMConfig(vocab_size=11, context=16, d_model=16, n_layers=1, n_heads=2)
    _, _, losses = lm.train_lm("the cat sat on the mat. " * 40, steps=80, batch=8, config=config)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_cached_logits_equal_full_logits_and_positions_continue(small_lm):
    model = small_lm()
    ids = torch.randint(0, 11, (2, 20))
    full = model(ids)
    cache = lm.KVCache(model.config.n_layers)
    parts = [model(ids[:, :7], cache)] + [model(ids[:, i:i + 1], cache) for i in range(7, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_the_model_refuses_too_long_input_and_wrong_shapes(small_lm):
    model = small_lm()
    with pytest.raises(ValueError, match="exceed"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, steps"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="exceed"):
        lm.generate(model, [1, 2, 3], 30)


def test_sampling_greedy_and_by_temperature():
    logits = torch.tensor([0.0, 2.0, 1.0])
    assert lm.sample_next(logits, 0.0) == 1
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([lm.sample_next(logits, 1.0, gen) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=3).float() / 4000
    torch.testing.assert_close(freq, torch.softmax(logits, 0), atol=0.03, rtol=0)
    cold = [lm.sample_next(logits, 0.05, gen) for _ in range(200)]
    assert cold.count(1) > 195
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            lm.sample_next(logits, bad)
    with pytest.raises(ValueError, match="one vector"):
        lm.sample_next(logits[None], 1.0)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cached_decoding_gives_the_same_tokens(temperature, small_lm):
    model = small_lm(1)
    a = lm.generate(model, [1, 2, 3], 20, temperature, seed=3)
    b = lm.generate_cached(model, [1, 2, 3], 20, temperature, seed=3)
    assert a == b and len(a) == 20


def test_a_missing_checkpoint_says_how_to_get_it_back(tmp_path):
    with pytest.raises(FileNotFoundError, match="course.lm build"):
        lm.load_model(tmp_path / "missing.pt")



def test_a_saved_checkpoint_loads_back_to_the_same_model(shipped, tmp_path):
    model, tokenizer, losses = shipped
    lm.save_checkpoint(model, tokenizer, losses, tmp_path / "copy.pt")
    again, tokenizer_again, _ = lm.load_model(tmp_path / "copy.pt")
    ids = torch.tensor([tokenizer.encode("The KV cache")])
    assert tokenizer_again.chars == tokenizer.chars
    assert torch.equal(model(ids), again(ids))  # the shipped weights are already 16-bit: nothing is lost
