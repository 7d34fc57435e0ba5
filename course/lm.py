"""The course's tiny language model: its text, its transformer, its training and decoding it.

A character-level, GPT-style decoder trained on the course's own text (committed in ``course/corpus/``, so
nothing is downloaded): the model that 07_foundation_models serves. `course.serving` holds the systems around
it: cache arithmetic, paging, batching, the context window and tool calls.

Regenerate the corpus and the checkpoint (about seven minutes on 2 cores)::

    python -m course.lm build
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course.bench import measure_time, synchronize

HERE = Path(__file__).resolve().parent / "corpus"
CORPUS = HERE / "course_text.txt"
CHECKPOINT = HERE / "tiny_lm.pt"

# ----------------------------------------------------------------------------------------------- text


class CharTokenizer:
    """One token per character; the vocabulary is the characters of the training text, sorted."""

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise ValueError("a tokenizer needs at least one character")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(f"characters the model never saw: {''.join(unknown)!r}; "
                             f"it knows {self.vocab_size} characters (ASCII letters, digits, punctuation)")
        return [self.index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


ASCII_FOR = {"·": "-", "—": "-", "–": "-", "→": "->", "←": "<-", "×": "x", "≈": "~", "≤": "<=", "≥": ">=",
             "’": "'", "‘": "'", "“": '"', "”": '"', "…": "...", "µ": "u", "é": "e", "ö": "o", "ü": "u",
             "½": "1/2", "✔": "", "✘": "", "°": " deg", "±": "+-", "²": "^2", "√": "sqrt", "∞": "inf"}


def to_ascii(text: str) -> str:
    """The text with common symbols spelled in ASCII and anything else dropped."""
    text = "".join(ASCII_FOR.get(c, c) for c in text)
    return "".join(c for c in text if c == "\n" or 32 <= ord(c) < 127)


#: The helper files of module 07 (both notebooks): left out of the corpus, like 07's notebooks, so that editing
#: the module that serves the model never changes what the model was trained on.
MODULE_07_FILES = ("lm.py", "serving.py", "kv_blocks.py", "engine.py", "prefix_cache.py", "model_server.py",
                   "loadgen.py", "speculative.py", "kv_quant.py")


def build_corpus(repo: Path) -> str:
    """The course's own text: the prose of every solution notebook (not its code, hints or mark schemes),
    the README, the instructors' guide and the helper package's source (this module's two files left out)."""
    parts = []
    for path in sorted((repo / "solutions").glob("*/*.ipynb")):
        if path.stem.startswith("07"):
            continue  # this module's own text would change the corpus each time it is edited
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            if cell["cell_type"] != "markdown" or "<details>" in text or "BEGIN MARK SCHEME" in text:
                continue
            parts.append(re.sub(r"<[^>]+>", "", text))  # without HTML tags
    parts += [(repo / name).read_text() for name in ("README.md", "autograders/INSTRUCTORS.md")]
    parts += [p.read_text() for p in sorted((repo / "course").glob("*.py")) if p.name not in MODULE_07_FILES]
    return "\n\n".join(to_ascii(p).strip() for p in parts if p.strip()) + "\n"


def load_corpus() -> str:
    if not CORPUS.exists():
        raise FileNotFoundError(f"{CORPUS} is missing: reinstall the course, or run "
                                "`python -m course.lm build`")
    return CORPUS.read_text()


def split_corpus(text: str, every: int = 10, block: int = 2000) -> tuple[str, str]:
    """Hold out every `every`-th block of `block` characters (prose and code alike); train on the rest."""
    blocks = [text[i:i + block] for i in range(0, len(text), block)]
    train = "".join(b for i, b in enumerate(blocks) if i % every != every - 1)
    held = "".join(b for i, b in enumerate(blocks) if i % every == every - 1)
    return train, held


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int
    context: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.1  # while training only

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class KVCache:
    """The reference key/value cache: per layer, the keys and values of every token seen so far.

    ``update(layer, k, v)`` appends the new tokens' keys and values (batch, heads, new tokens, head_dim)
    and returns all of them; ``length`` is how many tokens are cached.
    """

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"keys and values must have the same 4-d shape, got {tuple(k.shape)} and "
                             f"{tuple(v.shape)}")
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        batch, steps, width = x.shape
        q, k, v = (t.view(batch, steps, self.n_heads, self.head_dim).transpose(1, 2)
                   for t in self.qkv(x).split(width, dim=2))
        if cache is not None:
            k, v = cache.update(layer, k, v)
            if k.shape[2] < steps or k.shape[:2] != q.shape[:2]:
                raise ValueError(f"the cache returned keys of shape {tuple(k.shape)} for queries of shape "
                                 f"{tuple(q.shape)}: it must return every cached token, new ones last")
        past = k.shape[2] - steps  # query i sits at position past + i and sees keys 0 .. past + i
        mask = torch.arange(k.shape[2], device=x.device)[None, :] <= \
            (past + torch.arange(steps, device=x.device))[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, steps, width))


class Block(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = Attention(config)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, 4 * config.d_model), nn.GELU(),
                                 nn.Linear(4 * config.d_model, config.d_model))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cache=None, layer: int = 0):
        x = x + self.drop(self.attn(self.norm1(x), cache, layer))
        return x + self.drop(self.mlp(self.norm2(x)))


class TinyLM(nn.Module):
    """A GPT-style decoder: token and position embeddings, pre-norm blocks, a linear head.

    ``model(ids)`` returns logits (batch, steps, vocab) for ids (batch, steps). With ``cache``, the ids are
    the *new* tokens only: their positions start after the cached ones, and each layer adds its keys and
    values to the cache through ``cache.update(layer, k, v)``.
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, ids: torch.Tensor, cache=None) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"ids must be (batch, steps), got shape {tuple(ids.shape)}")
        start = 0 if cache is None else cache.length
        if start + ids.shape[1] > self.config.context:
            raise ValueError(f"{start} cached + {ids.shape[1]} new tokens exceed the model's context of "
                             f"{self.config.context}")
        x = self.tokens(ids) + self.positions(torch.arange(start, start + ids.shape[1], device=ids.device))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        return self.head(self.norm(x))


# ------------------------------------------------------------------------------------------- training


def batches(ids: torch.Tensor, context: int, batch: int, generator: torch.Generator):
    starts = torch.randint(0, len(ids) - context - 1, (batch,), generator=generator)
    x = torch.stack([ids[s:s + context] for s in starts])
    y = torch.stack([ids[s + 1:s + context + 1] for s in starts])
    return x, y


def train_lm(text: str, steps: int = 1500, batch: int = 32, lr: float = 3e-3, seed: int = 0,
             config: LMConfig | None = None, tokenizer: CharTokenizer | None = None,
             log: Callable[[str], None] | None = None):
    """Train a TinyLM on `text`; returns (model, tokenizer, losses per step)."""
    torch.manual_seed(seed)
    tokenizer = tokenizer or CharTokenizer(text)
    config = config or LMConfig(vocab_size=tokenizer.vocab_size)
    model = TinyLM(config)
    ids = torch.tensor(tokenizer.encode(text))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for step in range(steps):
        x, y = batches(ids, config.context, batch, generator)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log and (step % 250 == 0 or step == steps - 1):
            log(f"step {step:5d}  loss {loss.item():.3f}")
    return model.eval(), tokenizer, losses


def save_checkpoint(model: TinyLM, tokenizer: CharTokenizer, losses: list[float], path: Path = CHECKPOINT):
    state = {key: value.half() for key, value in model.state_dict().items()}  # half the file, same text
    torch.save({"config": asdict(model.config), "chars": "".join(tokenizer.chars), "state": state,
                "losses": [round(x, 4) for x in losses]}, path)


def load_model(path: Path = CHECKPOINT, device: torch.device | str = "cpu"):
    """The course's trained TinyLM, its tokenizer and its training losses."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no checkpoint at {path}: reinstall the course, or run "
                                "`python -m course.lm build`")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    tokenizer = CharTokenizer(saved["chars"])
    model = TinyLM(LMConfig(**saved["config"]))
    model.load_state_dict({key: value.float() for key, value in saved["state"].items()})
    return model.to(device).eval(), tokenizer, saved["losses"]


@torch.no_grad()
def evaluate(model: TinyLM, tokenizer: CharTokenizer, text: str, windows: int = 16) -> dict[str, float]:
    """Mean loss (nats per character) and next-character accuracy over `windows` evenly spaced windows."""
    ids = torch.tensor(tokenizer.encode(text))
    context = model.config.context
    device = next(model.parameters()).device
    starts = np.linspace(0, len(ids) - context - 1, windows).astype(int)
    x = torch.stack([ids[s:s + context] for s in starts]).to(device)
    y = torch.stack([ids[s + 1:s + context + 1] for s in starts]).to(device)
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    accuracy = (logits.argmax(-1) == y).float().mean().item()
    return {"loss": loss, "accuracy": accuracy}


# ------------------------------------------------------------------------------------------- decoding


def sample_next(logits: torch.Tensor, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> int:
    """The next token: the most likely one at temperature 0, else a draw from softmax(logits / T)."""
    if logits.dim() != 1:
        raise ValueError(f"logits must be one vector over the vocabulary, got shape {tuple(logits.shape)}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    logits = logits.detach().float().cpu()
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=0)
    return int(torch.multinomial(probs, 1, generator=generator))


def _check_room(model: TinyLM, prompt_ids, n_new: int) -> None:
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    if len(prompt_ids) + n_new > model.config.context:
        raise ValueError(f"{len(prompt_ids)} prompt + {n_new} new tokens exceed the context of "
                         f"{model.config.context}")


@torch.no_grad()
def generate(model: TinyLM, prompt_ids: list[int], n_new: int, temperature: float = 0.0,
             seed: int = 0) -> list[int]:
    """Decode without a cache: every step runs the model over the whole sequence so far."""
    _check_room(model, prompt_ids, n_new)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    for _ in range(n_new):
        logits = model(torch.tensor([ids], device=device))[0, -1]
        ids.append(sample_next(logits, temperature, generator))
    return ids[len(prompt_ids):]


@torch.no_grad()
def generate_cached(model: TinyLM, prompt_ids: list[int], n_new: int, temperature: float = 0.0,
                    seed: int = 0, cache=None) -> list[int]:
    """Decode with a key/value cache: the prompt once (prefill), then one new token per step."""
    _check_room(model, prompt_ids, n_new)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    cache = KVCache(model.config.n_layers) if cache is None else cache
    out: list[int] = []
    logits = model(torch.tensor([list(prompt_ids)], device=device), cache)[0, -1]
    for step in range(n_new):
        out.append(sample_next(logits, temperature, generator))
        if step < n_new - 1:
            logits = model(torch.tensor([[out[-1]]], device=device), cache)[0, -1]
    return out


def time_per_token(decode: Callable[..., list[int]], model: TinyLM, prompt_ids: list[int], n_new: int,
                   repeats: int = 3) -> float:
    """Best-of-`repeats` seconds per generated token of ``decode(model, prompt_ids, n_new)``."""
    device = next(model.parameters()).device
    timing = measure_time(lambda: decode(model, prompt_ids, n_new), repeats=repeats, warmup=0, device=device)
    return timing.min / max(n_new, 1)


@torch.no_grad()
def step_times(model: TinyLM, lengths: Iterable[int], cached: bool, repeats: int = 9,
               statistic: Callable[[list[float]], float] = min) -> list[float]:
    """Seconds to produce the token at each sequence length: one new token with a cache of `length - 1`
    tokens, or the whole `length` tokens again without one. The fastest of `repeats` by default (what the
    step costs when nothing else interferes; a busy or shared CPU disturbs it least); pass
    ``statistic=statistics.median`` for the typical one.

    Each cached repeat needs a freshly prefilled cache, built outside the timed part, so this times by hand
    rather than with `course.bench.measure_time`.
    """
    device = next(model.parameters()).device
    out = []
    for length in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
        samples = []
        for _ in range(repeats):
            if cached:
                cache = KVCache(model.config.n_layers)
                model(ids[:, :-1], cache)
            synchronize(device)
            start = time.perf_counter()
            model(ids[:, -1:], cache) if cached else model(ids)
            synchronize(device)
            samples.append(time.perf_counter() - start)
        out.append(float(statistic(samples)))
    return out


# ------------------------------------------------------------------------------------------ building


def build(repo: Path, steps: int = 1500) -> None:
    HERE.mkdir(exist_ok=True)
    CORPUS.write_text(build_corpus(repo))
    text = load_corpus()
    train, held = split_corpus(text)
    torch.set_num_threads(2)
    start = time.perf_counter()
    model, tokenizer, losses = train_lm(train, steps=steps, tokenizer=CharTokenizer(text), log=print)
    print(f"trained in {time.perf_counter() - start:.0f} s; held-out {evaluate(model, tokenizer, held)}")
    save_checkpoint(model, tokenizer, losses)
    print(f"{CORPUS}: {CORPUS.stat().st_size} bytes; {CHECKPOINT}: {CHECKPOINT.stat().st_size} bytes")


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        build(Path(__file__).resolve().parents[1])
    else:
        print(__doc__)
