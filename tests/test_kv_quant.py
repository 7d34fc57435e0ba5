"""course.kv_quant: absmax int8 quantization of keys and values, and a cache that stores them (07b)."""

import pytest
import torch

from course import kv_quant as kq
from course import lm


def test_round_trip_error_is_at_most_half_a_step_and_codes_are_int8():
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0)) * 4
    q, scale = kq.quantize(x)
    assert q.dtype == torch.int8 and q.shape == x.shape and scale.shape == (3, 5, 1)
    assert int(q.abs().max()) == 127  # the largest element of each vector maps to +-127
    assert ((kq.dequantize(q, scale) - x).abs() <= scale / 2 + 1e-6).all()


def test_one_scale_per_vector_keeps_small_vectors_precise():
    x = torch.stack([torch.linspace(-1, 1, 16) * 1e-3, torch.linspace(-1, 1, 16) * 1e3])
    q, scale = kq.quantize(x)
    assert torch.allclose(kq.dequantize(q, scale)[0], x[0], atol=1e-5)


def test_zero_vectors_and_fewer_bits():
    x = torch.zeros(2, 8)
    x[1, 3] = -2.0
    q, scale = kq.quantize(x)
    assert scale[0, 0] == 0 and (q[0] == 0).all() and torch.isfinite(kq.dequantize(q, scale)).all()
    q4, _ = kq.quantize(torch.randn(100, 8), bits=4)
    assert int(q4.abs().max()) == 7


@pytest.mark.parametrize("bad", [torch.tensor(1.0), torch.ones(3, 0), torch.ones(4, dtype=torch.int64),
                                 torch.tensor([1.0, float("nan")]), torch.tensor([float("inf"), 1.0])])
def test_bad_input_is_refused(bad):
    with pytest.raises(ValueError):
        kq.quantize(bad)


def test_dequantize_refuses_wrong_codes_or_scales():
    q, scale = kq.quantize(torch.randn(4, 8))
    with pytest.raises(ValueError):
        kq.dequantize(q.int(), scale)
    with pytest.raises(ValueError):
        kq.dequantize(q, scale.squeeze(-1))
    with pytest.raises(ValueError):
        kq.quantize(torch.randn(4, 8), bits=9)


def test_cache_follows_the_protocol_and_counts_its_bytes():
    model, tokenizer, _ = lm.load_model()
    config = model.config
    ids = torch.tensor([tokenizer.encode("The KV cache keeps keys")])
    cache = kq.Int8KVCache(config.n_layers)
    model(ids[:, :10], cache)
    model(ids[:, 10:], cache)
    assert cache.length == ids.shape[1]
    per_layer = 2 * config.n_heads * (config.head_dim * 1 + 4)  # int8 codes + a float32 scale, keys, values
    assert kq.bytes_per_token(cache) == config.n_layers * per_layer
    plain = lm.KVCache(config.n_layers)
    model(ids, plain)
    assert kq.bytes_per_token(plain) == 2 * config.n_layers * config.d_model * 4
    with pytest.raises(ValueError):
        kq.bytes_per_token(kq.Int8KVCache(config.n_layers))
    with pytest.raises(ValueError):
        cache.update(0, torch.zeros(1, 4, 2, 32), torch.zeros(1, 4, 3, 32))


def test_int8_cache_barely_changes_the_model():
    model, tokenizer, _ = lm.load_model()
    prompt = tokenizer.encode("def train(")
    assert lm.generate_cached(model, prompt, 30, cache=kq.Int8KVCache(model.config.n_layers)) == \
        lm.generate_cached(model, prompt, 30)
    ids = torch.tensor(tokenizer.encode(lm.split_corpus(lm.load_corpus())[1][:2000]))
    windows = torch.stack([ids[i:i + 65] for i in range(0, 1000, 250)])
    plain = kq.teacher_forced_losses(model, windows, lambda: lm.KVCache(model.config.n_layers))
    int8 = kq.teacher_forced_losses(model, windows, lambda: kq.Int8KVCache(model.config.n_layers), chunks=3)
    int2 = kq.teacher_forced_losses(model, windows, lambda: kq.Int8KVCache(model.config.n_layers, bits=2))
    assert plain.shape == (4,)
    assert torch.allclose(plain, kq.teacher_forced_losses(model, windows, lambda: lm.KVCache(4), chunks=1),
                          atol=1e-5)  # chunking alone changes nothing
    assert (int8 - plain).abs().max() < 0.01 < (int2 - plain).mean()
