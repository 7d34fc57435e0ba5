"""A quantized key/value cache: keys and values kept as 8-bit integers with one scale per vector.

Taught in 07b_serving ("A quantized KV cache", Exercise 4). During decoding the KV cache, not the weights, is
what grows with every token and every user (07_foundation_models computed its size); storing it in 8 bits
instead of 16 nearly halves it, so nearly twice the tokens fit in the same memory.

- `quantize(x, bits=8)` / `dequantize(q, scale)`: symmetric absmax quantization of each vector along the last
  axis: ``scale = max|x| / qmax``, ``q = clamp(round(x / scale), -qmax, qmax)`` with
  ``qmax = 2**(bits-1) - 1`` (127 for int8), and ``x ~ q * scale``; the rounding error is at most
  ``scale / 2`` per element. An all-zero vector gets scale 0 and codes 0. (Absmax quantization as in
  LLM.int8(), Dettmers et al. 2022, section 2.1, there with one scale per tensor, and with one per row or
  column in its section 3.1, vector-wise quantization.)
- Why one scale per (token, head) vector rather than one per tensor: a single outlier token would set the
  scale for every other token and crush their precision. Engines choose their granularity with care: KIVI (Liu
  et al., ICML 2024) quantizes keys per channel and values per token; vLLM's FP8 KV cache keeps one scale per
  tensor or per attention head in each layer (vLLM docs, "Quantized KV Cache"), coarser, which a
  floating-point format's own exponent makes tolerable.
- `Int8KVCache(n_layers, bits=8)` implements TinyLM's cache protocol (``update(layer, k, v)``, ``length``, see
  `course.lm.KVCache`): it stores the codes and scales and returns the dequantized keys and values of every
  cached token, so each token attends to keys and values that went through the quantizer, as in an engine that
  writes the cache first and reads it back. Codes of fewer than 8 bits are kept one per int8 here; real
  kernels pack two 4-bit codes in a byte, and `bytes_per_token` counts them packed.
- `bytes_per_token(cache)`: what a cached token costs, codes plus scales (or float keys and values for
  `course.lm.KVCache`), summed over layers, keys and values.
- `teacher_forced_losses(model, windows, make_cache, chunks)`: loss per held-out window (nats per character)
  when the windows are fed through a cache in chunks, to compare a float and a quantized cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _qmax(bits: int) -> int:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8 (codes are kept in int8), got {bits!r}")
    return 2 ** (bits - 1) - 1


def quantize(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization of every vector along the last axis of `x`.

    x: a floating-point tensor of shape (..., d), d >= 1, finite. Returns (q, scale): q int8 of x's shape,
    codes in [-qmax, qmax] (qmax = 127 for 8 bits); scale float32 of shape (..., 1), max|x| / qmax of each
    vector (0 for an all-zero vector, whose codes are 0). ``q * scale`` is within scale / 2 of x. Raises
    ValueError for a non-float tensor, a 0-d tensor, an empty last axis, NaN or infinity, or bits outside
    2..8."""
    qmax = _qmax(bits)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = getattr(x, "dtype", type(x).__name__)
        raise ValueError(f"quantize needs a floating-point tensor, got {got}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"quantize needs vectors along the last axis, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("quantize got NaN or infinity: there is no finite scale for that vector")
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a zero vector: codes 0, scale 0
    q = torch.round(x / safe).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``q * scale``: q int8 (..., d), scale (..., 1) as `quantize` returns. ValueError otherwise."""
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        raise ValueError(f"dequantize needs int8 codes, got {getattr(q, 'dtype', type(q).__name__)}")
    if not isinstance(scale, torch.Tensor) or q.dim() == 0 or tuple(scale.shape) != (*q.shape[:-1], 1):
        raise ValueError(f"scale must have shape {(*q.shape[:-1], 1)} (one per vector) for codes of shape "
                         f"{tuple(q.shape)}, got {tuple(getattr(scale, 'shape', ()))}")
    return q.float() * scale.float()


class Int8KVCache:
    """TinyLM's cache protocol with keys and values stored as `bits`-bit codes and a float32 scale per
    (batch, head, token) vector. ``update(layer, k, v)`` takes the new tokens' keys and values (batch, heads,
    new tokens, head_dim), stores them quantized and returns the dequantized keys and values of all cached
    tokens (float32, new ones last); ``length`` is how many tokens are cached. `quantizer` (default
    `quantize`) may be replaced, e.g. by a learner's own function with the same contract."""

    def __init__(self, n_layers: int, bits: int = 8,
                 quantizer: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None):
        if n_layers <= 0:
            raise ValueError(f"n_layers must be positive, got {n_layers}")
        _qmax(bits)
        self.bits = bits
        self.quantizer = quantizer or (lambda x: quantize(x, bits))
        self.codes: list[dict[str, torch.Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.codes[0] is None else self.codes[0]["k"].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"keys and values must have the same 4-d shape, got {tuple(k.shape)} and "
                             f"{tuple(v.shape)}")
        new = {}
        for name, x in (("k", k), ("v", v)):
            q, scale = self.quantizer(x.detach())
            new[name], new[name + "_scale"] = q, scale
        if self.codes[layer] is not None:
            new = {name: torch.cat([self.codes[layer][name], new[name]], dim=2) for name in new}
        self.codes[layer] = new
        dtype = k.dtype
        return (dequantize(new["k"], new["k_scale"]).to(dtype),
                dequantize(new["v"], new["v_scale"]).to(dtype))


def bytes_per_token(cache) -> float:
    """Bytes one cached token takes in `cache`, summed over layers, keys and values, per sequence of the
    batch: codes (bits / 8 bytes each, packed) plus scales for an `Int8KVCache`, float keys and values for a
    `course.lm.KVCache`. ValueError for an empty cache."""
    if cache.length == 0:
        raise ValueError("the cache is empty: run the model through it first")
    total, batch = 0.0, None
    if isinstance(cache, Int8KVCache):
        for layer in cache.codes:
            for name, t in layer.items():
                per = cache.bits / 8 if not name.endswith("_scale") else t.element_size()
                total += t.numel() * per
            batch = layer["k"].shape[0]
    else:
        for t in [*cache.keys, *cache.values]:
            total += t.numel() * t.element_size()
        batch = cache.keys[0].shape[0]
    return total / (batch * cache.length)


@torch.no_grad()
def teacher_forced_losses(model, windows: torch.Tensor, make_cache: Callable[[], object],
                          chunks: int = 4) -> torch.Tensor:
    """Loss (nats per token) of each window when fed through a fresh ``make_cache()`` in `chunks` pieces.

    windows: int64 token ids (n_windows, steps + 1), steps <= the model's context; the model predicts tokens
    1..steps from those before them, every key and value going through the cache (later chunks attend to
    cached, e.g. quantized, keys). Returns a float tensor (n_windows,)."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (n_windows, steps + 1) with steps >= 1, "
                         f"got {tuple(windows.shape)}")
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    device = next(model.parameters()).device
    x, y = windows[:, :-1].to(device), windows[:, 1:].to(device)
    cache = make_cache()
    pieces = [piece for piece in x.tensor_split(chunks, dim=1) if piece.shape[1]]
    logits = torch.cat([model(piece, cache) for piece in pieces], dim=1)
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1).cpu()
