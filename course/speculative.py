"""Speculative decoding: a small draft model proposes tokens, the target model checks them in one pass.

Taught in 07b_serving ("Speculative decoding", Exercise 3 is `verify`). The algorithm is Leviathan, Kalman
and Matias, "Fast Inference from Transformers via Speculative Decoding", ICML 2023 (Algorithm 1; Appendix A.1
proves that the tokens it emits follow the target model's distribution), and, found independently, Chen et
al., 2023, "Accelerating Large Language Model Decoding with Speculative Sampling" (Algorithm 2). One round:

1. the draft model, with its own KV cache, proposes gamma tokens x_1..x_gamma, drawing each from its
   distribution q_i;
2. the target model scores the last token and the gamma drafts in ONE forward pass over gamma + 1 positions
   (with its KV cache): p_1..p_{gamma+1};
3. `verify`: accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection emit one token
   drawn from norm(max(0, p_i - q_i)) and stop; if all gamma are accepted, emit a bonus token drawn from
   p_{gamma+1};
4. both caches are rolled back past the rejected drafts (`rollback`).

Every round costs one target pass and emits between 1 and gamma + 1 tokens. At temperature 0 (p and q one-hot
on their argmax) a draft is accepted exactly when it is the target's argmax: the output is greedy decoding's.

The draft is a TinyLM with one layer of width 48 (`DRAFT_CONFIG`), the same tokenizer and context as the
course's TinyLM, trained on the same training split; it ships as ``course/corpus/draft_lm.pt`` (16-bit
weights) and is rebuilt with ``python -m course.speculative build`` (212 s on 2 busy cores when it was built).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from course import lm
from course.bench import synchronize

DRAFT_CHECKPOINT = lm.HERE / "draft_lm.pt"
DRAFT_CONFIG = {"d_model": 48, "n_layers": 1, "n_heads": 4}
DRAFT_STEPS = 2000


# --------------------------------------------------------------------------------------------- draft model


def build(steps: int = DRAFT_STEPS, seed: int = 0) -> None:
    """Train the draft model on the target's training split with the target's tokenizer and save it."""
    torch.set_num_threads(2)
    target, tokenizer, _ = lm.load_model()
    train, held = lm.split_corpus(lm.load_corpus())
    config = lm.LMConfig(vocab_size=tokenizer.vocab_size, context=target.config.context, **DRAFT_CONFIG)
    start = time.perf_counter()
    draft, _, losses = lm.train_lm(train, steps=steps, seed=seed, config=config, tokenizer=tokenizer,
                                   log=print)
    seconds = time.perf_counter() - start
    print(f"trained in {seconds:.0f} s on {torch.get_num_threads()} threads; held-out draft "
          f"{lm.evaluate(draft, tokenizer, held)}, target {lm.evaluate(target, tokenizer, held)}")
    lm.save_checkpoint(draft, tokenizer, losses, DRAFT_CHECKPOINT)
    print(f"{DRAFT_CHECKPOINT}: {DRAFT_CHECKPOINT.stat().st_size} bytes")


def load_draft(device: torch.device | str = "cpu"):
    """The draft TinyLM (model, tokenizer, training losses), on `device`, in eval mode."""
    if not DRAFT_CHECKPOINT.exists():
        raise FileNotFoundError(f"no draft checkpoint at {DRAFT_CHECKPOINT}: reinstall the course, or run "
                                "`python -m course.speculative build`")
    return lm.load_model(DRAFT_CHECKPOINT, device)


# --------------------------------------------------------------------------------------------- the rule


def _check(p: torch.Tensor, q: torch.Tensor, draft_tokens) -> None:
    if not isinstance(p, torch.Tensor) or not isinstance(q, torch.Tensor) or p.dim() != 2 or q.dim() != 2:
        raise ValueError("p and q must be 2-d tensors: p (gamma + 1, vocab), q (gamma, vocab)")
    gamma = len(draft_tokens)
    if p.shape[0] != gamma + 1 or q.shape[0] != gamma or p.shape[1] != q.shape[1]:
        raise ValueError(f"for {gamma} draft tokens p must be ({gamma + 1}, vocab) and q ({gamma}, vocab); "
                         f"got p {tuple(p.shape)} and q {tuple(q.shape)}")
    for name, probs in (("p", p), ("q", q)):
        if probs.numel() and (bool((probs < 0).any()) or not torch.allclose(
                probs.double().sum(1), torch.ones(probs.shape[0], dtype=torch.float64), atol=1e-4)):
            raise ValueError(f"every row of {name} must be a probability distribution (>= 0, summing to 1); "
                             f"row sums {probs.double().sum(1).tolist()}")
    if any(not 0 <= int(x) < p.shape[1] for x in draft_tokens):
        raise ValueError(f"draft tokens must lie in [0, {p.shape[1]}), got {list(draft_tokens)}")


def acceptance_probability(p_row: torch.Tensor, q_row: torch.Tensor, token: int) -> float:
    """min(1, p(x) / q(x)) for the drafted token x (1 when q(x) = 0)."""
    p_x, q_x = float(p_row[token]), float(q_row[token])
    return 1.0 if p_x >= q_x else p_x / q_x


def residual(p_row: torch.Tensor, q_row: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): where a rejected token is redrawn from (Leviathan et al., Section 2.3).

    When p equals q (up to rounding) nothing is ever rejected; p itself is returned so that the draw stays
    defined."""
    rest = torch.clamp(p_row.double() - q_row.double(), min=0)
    total = float(rest.sum())
    return p_row.double() / float(p_row.double().sum()) if total <= 1e-12 else rest / total


def verify(p: torch.Tensor, q: torch.Tensor, draft_tokens,
           generator: torch.Generator | None = None) -> list[int]:
    """One round's accept/reject rule (Exercise 3 of 07b_serving; Leviathan et al. 2023, Algorithm 1).

    p: the target's probabilities, (gamma + 1, vocab): row i is its distribution for the token after the first
    i drafts. q: the draft's, (gamma, vocab). draft_tokens: gamma ints, token i drawn from q[i].
    Returns the accepted drafts followed by one more token: the redraw at the first rejection, or the bonus
    draw from p[gamma] when all are accepted (between 1 and gamma + 1 ints). Raises ValueError on shapes that
    do not match or rows that are not distributions.
    """
    _check(p, q, draft_tokens)
    out = []
    for i, token in enumerate(int(x) for x in draft_tokens):
        if float(torch.rand((), generator=generator)) < acceptance_probability(p[i], q[i], token):
            out.append(token)
            continue
        out.append(int(torch.multinomial(residual(p[i], q[i]), 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(p[-1].double(), 1, generator=generator)))
    return out


def first_token_distribution(p_row: torch.Tensor, q_row: torch.Tensor) -> torch.Tensor:
    """The exact distribution of the first emitted token under `verify`'s rule, by enumerating the draft:
    sum over x of q(x) * [a(x) * onehot(x) + (1 - a(x)) * residual]; Appendix A.1 shows it equals p."""
    out = torch.zeros(p_row.shape[0], dtype=torch.float64)
    rest = residual(p_row, q_row)
    for x in range(p_row.shape[0]):
        if float(q_row[x]) == 0:
            continue
        a = acceptance_probability(p_row, q_row, x)
        out[x] += float(q_row[x]) * a
        out += float(q_row[x]) * (1 - a) * rest
    return out


# ----------------------------------------------------------------------------------------------- decoding


def rollback(cache: lm.KVCache, length: int) -> None:
    """Forget every cached token from position `length` on (the rejected drafts), in every layer."""
    if not 0 <= length <= cache.length:
        raise ValueError(f"cannot roll a cache of {cache.length} tokens back to {length}")
    for layer in range(len(cache.keys)):
        if cache.keys[layer] is not None:
            cache.keys[layer] = cache.keys[layer][:, :, :length]
            cache.values[layer] = cache.values[layer][:, :, :length]


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) per row, in float64 on the CPU; one-hot on the argmax at temperature 0."""
    logits = logits.detach().double().cpu()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).double()
    return torch.softmax(logits / temperature, dim=-1)


@dataclass
class Speculation:
    """What `speculative_generate` emitted and how: per round, (drafts proposed, drafts accepted); seconds
    spent in the draft's steps and in the target's passes (each with its softmax), the rest being the
    round's bookkeeping."""
    tokens: list[int]
    rounds: list[tuple[int, int]] = field(default_factory=list)
    draft_calls: int = 0
    draft_s: float = 0.0
    target_s: float = 0.0

    @property
    def target_calls(self) -> int:
        return len(self.rounds)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / drafts the target judged (the first rejected one counts, those after it were
        never judged): an estimate of Leviathan et al.'s alpha (Section 3.1)."""
        judged = sum(k + (k < g) for g, k in self.rounds)
        return sum(k for _, k in self.rounds) / judged if judged else float("nan")

    def tokens_per_round(self, gamma: int | None = None) -> float:
        """Mean tokens emitted per target pass (over the rounds that drafted `gamma` tokens, if given)."""
        rounds = [k + 1 for g, k in self.rounds if gamma is None or g == gamma]
        return sum(rounds) / len(rounds) if rounds else float("nan")


@torch.no_grad()
def speculative_generate(target: lm.TinyLM, draft: lm.TinyLM, prompt_ids: list[int], n_new: int,
                         gamma: int = 4, temperature: float = 0.0, seed: int = 0, rule=verify) -> Speculation:
    """Decode n_new tokens after prompt_ids, the draft proposing gamma tokens a round and the target checking
    them in one pass (Leviathan et al. 2023, Algorithm 1). `rule(p, q, draft_tokens, generator)` is the
    accept/reject rule (`verify`, or a learner's). Both models keep a KV cache; the last round drafts fewer
    tokens so that exactly n_new come out. Raises ValueError as `lm.generate_cached` does, and for gamma < 1
    or models with different vocabularies or contexts."""
    lm._check_room(target, prompt_ids, n_new)
    if gamma < 1 or int(gamma) != gamma:
        raise ValueError(f"gamma (draft tokens per round) must be an integer >= 1, got {gamma}")
    if (draft.config.vocab_size, draft.config.context) != (target.config.vocab_size, target.config.context):
        raise ValueError("the draft must share the target's vocabulary and context")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    device = next(target.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    t_cache, d_cache = lm.KVCache(target.config.n_layers), lm.KVCache(draft.config.n_layers)
    seq = list(prompt_ids)
    result = Speculation(tokens=[])
    while len(result.tokens) < n_new:
        g = min(int(gamma), n_new - len(result.tokens) - 1)
        drafts, q_rows = [], []
        for _ in range(g):  # the draft feeds whatever it has not seen yet: the prompt, or the last 1-2 tokens
            pending = (seq + drafts)[d_cache.length:]
            start = time.perf_counter()
            q_row = probabilities(draft(torch.tensor([pending], device=device), d_cache)[0, -1], temperature)
            result.draft_s += time.perf_counter() - start  # probabilities() copied to the CPU: step done
            result.draft_calls += 1
            drafts.append(int(torch.multinomial(q_row, 1, generator=generator)) if temperature else
                          int(q_row.argmax()))
            q_rows.append(q_row)
        start = time.perf_counter()
        logits = target(torch.tensor([seq[t_cache.length:] + drafts], device=device), t_cache)[0, -(g + 1):]
        p = probabilities(logits, temperature)
        result.target_s += time.perf_counter() - start
        q = torch.stack(q_rows) if q_rows else torch.zeros(0, p.shape[1], dtype=p.dtype)
        emitted = [int(x) for x in rule(p, q, drafts, generator)]
        accepted = len(emitted) - 1
        if not 1 <= len(emitted) <= g + 1 or emitted[:accepted] != drafts[:accepted]:
            raise ValueError(f"the rule returned {emitted} for drafts {drafts}: it must return the accepted "
                             "drafts (a prefix of them) and then exactly one more token")
        seq += emitted
        result.tokens += emitted
        result.rounds.append((g, accepted))
        rollback(t_cache, len(seq) - 1)  # everything but the newest token, which the next round feeds
        rollback(d_cache, min(d_cache.length, len(seq) - 1))
    return result


# ----------------------------------------------------------------------------------------------- cost model


@torch.no_grad()
def pass_time(model: lm.TinyLM, cached: int, new: int, repeats: int = 9,
              statistic: Callable[[list[float]], float] = statistics.median) -> float:
    """Seconds for one forward pass over `new` tokens after a KV cache of `cached` tokens (the median of
    `repeats` by default; pass ``statistic=min`` for the undisturbed cost): new = 1 is a decoding step,
    new = gamma + 1 a verification pass."""
    if cached < 1 or new < 1 or cached + new > model.config.context:
        raise ValueError(f"need cached >= 1, new >= 1 and cached + new <= {model.config.context}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, cached + new), generator=generator).to(device)
    samples = []
    for _ in range(repeats):
        cache = lm.KVCache(model.config.n_layers)
        model(ids[:, :cached], cache)
        synchronize(device)
        start = time.perf_counter()
        model(ids[:, cached:], cache)
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return float(statistic(samples))


def cost_coefficients(target: lm.TinyLM, draft: lm.TinyLM, gammas, cached: int = 40,
                      repeats: int = 9) -> tuple[float, float, dict[int, float]]:
    """(target step seconds, c, {gamma: verification pass / target step}), measured in interleaved repeats.

    Each repeat times one target step, one draft step and one target pass over gamma + 1 tokens per gamma,
    back to back, and takes their ratios; the medians of the ratios are returned. On a shared CPU a burst of
    load then disturbs both sides of a ratio alike, which two separately measured medians would not survive.
    c is Leviathan et al.'s cost coefficient (Definition 3.7): a draft step over a target step."""
    steps, cs = [], []
    verify = {int(g): [] for g in gammas}
    for _ in range(repeats):
        step = pass_time(target, cached, 1, repeats=1)
        steps.append(step)
        cs.append(pass_time(draft, cached, 1, repeats=1) / step)
        for g in verify:
            verify[g].append(pass_time(target, cached, g + 1, repeats=1) / step)
    return (statistics.median(steps), statistics.median(cs),
            {g: statistics.median(ratios) for g, ratios in verify.items()})


def expected_tokens_per_round(alpha: float, gamma: int) -> float:
    """(1 - alpha^(gamma+1)) / (1 - alpha): tokens per target pass when each draft is accepted with
    probability alpha, independently (Leviathan et al. 2023, Equation 1)."""
    if not 0 <= alpha <= 1 or gamma < 0:
        raise ValueError(f"need 0 <= alpha <= 1 and gamma >= 0, got {alpha}, {gamma}")
    return gamma + 1.0 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """(1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1)): wall-clock speed-up over plain decoding when a
    draft step costs c target steps and a target pass over gamma + 1 positions costs one step (Leviathan et
    al. 2023, Theorem 3.8)."""
    if c < 0:
        raise ValueError(f"c (draft step / target step time) must be >= 0, got {c}")
    return expected_tokens_per_round(alpha, gamma) / (gamma * c + 1)


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        build()
    else:
        print(__doc__)
