"""course.speculative: the accept/reject rule keeps the target's distribution, greedy speculative decoding is
greedy decoding, caches roll back exactly, bad inputs are refused."""

import pytest
import torch

from course import lm
from course import speculative as spec


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    target, tokenizer, _ = lm.load_model()
    draft, draft_tokenizer, _ = spec.load_draft()
    assert draft_tokenizer.chars == tokenizer.chars
    return target, draft, tokenizer


def random_distribution(vocab: int, seed: int, sharp: float = 1.0) -> torch.Tensor:
    return torch.softmax(sharp * torch.randn(vocab, generator=torch.Generator().manual_seed(seed)),
                         0).double()


@pytest.mark.parametrize("seed", range(6))
def test_first_token_distribution_is_exactly_p(seed):
    """Enumerate the draft token: q(x) * [accept x, or reject and redraw from the residual] sums to p."""
    p, q = random_distribution(7, 2 * seed, 2.0), random_distribution(7, 2 * seed + 1, 2.0)
    assert torch.allclose(spec.first_token_distribution(p, q), p, atol=1e-12)
    assert torch.allclose(spec.first_token_distribution(p, p), p, atol=1e-12)  # nothing is ever rejected


def test_first_token_distribution_when_the_draft_misses_tokens():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # the draft only ever proposes token 2
    assert torch.allclose(spec.first_token_distribution(p, q), p, atol=1e-12)


def test_verify_samples_follow_p():
    """The same through `verify` itself: 6,000 seeded rounds, chi-square against p (and far from q)."""
    p1, q1 = torch.tensor([0.1, 0.2, 0.3, 0.4]).double(), torch.tensor([0.4, 0.3, 0.2, 0.1]).double()
    p = torch.stack([p1, torch.full((4,), 0.25).double()])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    n = 6_000
    for _ in range(n):
        x = int(torch.multinomial(q1, 1, generator=gen))
        counts[spec.verify(p, q1[None], [x], gen)[0]] += 1
    chi2 = float(((counts - n * p1.float()) ** 2 / (n * p1.float())).sum())
    assert chi2 < 20, (chi2, counts)


def test_verify_deterministic_cases():
    onehot = torch.eye(5).double()
    # all accepted: gamma + 1 tokens, the last one the bonus from p[gamma]
    p = torch.stack([onehot[1], onehot[2], onehot[4]])
    assert spec.verify(p, torch.stack([onehot[1], onehot[2]]), [1, 2]) == [1, 2, 4]
    # the first draft rejected (p gives it 0): one token, the target's, and nothing after it
    p = torch.stack([onehot[3], onehot[2], onehot[4]])
    assert spec.verify(p, torch.stack([onehot[1], onehot[2]]), [1, 2]) == [3]
    # gamma = 0: only the bonus draw
    assert spec.verify(onehot[[0]], torch.zeros(0, 5).double(), []) == [0]


def test_verify_refuses_bad_input():
    p, q = torch.full((3, 4), 0.25), torch.full((2, 4), 0.25)
    with pytest.raises(ValueError):
        spec.verify(p, q, [0])              # gamma 1, but q has two rows
    with pytest.raises(ValueError):
        spec.verify(p[:, :3] / 0.75, q, [0, 1])  # different vocabularies
    with pytest.raises(ValueError):
        spec.verify(p * 2, q, [0, 1])       # rows sum to 2
    with pytest.raises(ValueError):
        spec.verify(p, q, [0, 4])           # a token outside the vocabulary
    with pytest.raises(ValueError):
        spec.verify(p[0], q, [0, 1])        # 1-d p


def test_rollback():
    cache = lm.KVCache(2)
    for layer in range(2):
        cache.update(layer, torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3))
    kept = cache.keys[1][:, :, :3].clone()
    spec.rollback(cache, 3)
    assert cache.length == 3 and torch.equal(cache.keys[1], kept) and cache.values[0].shape[2] == 3
    with pytest.raises(ValueError):
        spec.rollback(cache, 4)


def test_rolled_back_cache_gives_the_same_logits(models):
    """A cache that saw rejected drafts and was rolled back predicts exactly as one that never saw them."""
    target, _, tokenizer = models
    ids = tokenizer.encode("The KV cache holds")
    with torch.no_grad():
        clean = lm.KVCache(target.config.n_layers)
        target(torch.tensor([ids]), clean)
        dirty = lm.KVCache(target.config.n_layers)
        target(torch.tensor([ids + tokenizer.encode("xyz")]), dirty)
        spec.rollback(dirty, len(ids))
        nxt = torch.tensor([tokenizer.encode(" a")])
        assert torch.allclose(target(nxt, clean), target(nxt, dirty), atol=1e-5)


@pytest.mark.parametrize("text,gamma", [("The KV cache", 1), ("def train(", 3), ("\n", 4), ("Exercise", 6)])
def test_greedy_speculative_is_greedy_decoding(models, text, gamma):
    target, draft, tokenizer = models
    prompt = tokenizer.encode(text)
    out = spec.speculative_generate(target, draft, prompt, 40, gamma=gamma)
    assert out.tokens == lm.generate_cached(target, prompt, 40)
    assert len(out.tokens) == 40 and all(g <= gamma for g, _ in out.rounds)
    assert sum(k + 1 for _, k in out.rounds) == 40


def test_sampled_speculative_runs_and_is_seeded(models):
    target, draft, tokenizer = models
    prompt = tokenizer.encode("A model ")
    a = spec.speculative_generate(target, draft, prompt, 30, gamma=3, temperature=0.8, seed=4)
    b = spec.speculative_generate(target, draft, prompt, 30, gamma=3, temperature=0.8, seed=4)
    assert a.tokens == b.tokens and len(a.tokens) == 30 and 0 <= a.acceptance_rate <= 1


def test_speculative_generate_refuses_bad_input(models):
    target, draft, tokenizer = models
    prompt = tokenizer.encode("abc")
    for kwargs in ({"gamma": 0}, {"temperature": -1.0}, {"n_new": target.config.context}):
        args = {"n_new": 5, **kwargs}
        with pytest.raises(ValueError):
            spec.speculative_generate(target, draft, prompt, **args)
    with pytest.raises(ValueError):
        spec.speculative_generate(target, draft, [], 5)


def test_a_rule_that_breaks_the_contract_is_refused(models):
    target, draft, tokenizer = models
    with pytest.raises(ValueError):
        spec.speculative_generate(target, draft, tokenizer.encode("abc"), 10, gamma=3,
                                  rule=lambda p, q, d, g: d)  # no corrected or bonus token


def test_cost_model():
    assert spec.expected_tokens_per_round(0.0, 4) == 1
    assert spec.expected_tokens_per_round(1.0, 4) == 5
    assert spec.expected_tokens_per_round(0.5, 2) == pytest.approx(1.75)
    assert spec.expected_speedup(0.5, 2, 0.25) == pytest.approx(1.75 / 1.5)
    with pytest.raises(ValueError):
        spec.expected_tokens_per_round(1.2, 3)
    with pytest.raises(ValueError):
        spec.expected_speedup(0.5, 3, -0.1)


def test_pass_time(models):
    target, _, _ = models
    assert 0 < spec.pass_time(target, 20, 5, repeats=2) < 5
    with pytest.raises(ValueError):
        spec.pass_time(target, 120, 20)


def test_cost_coefficients(models):
    target, draft, _ = models
    step, c, verify = spec.cost_coefficients(target, draft, [1, 3], repeats=2)
    assert step > 0 and c > 0 and set(verify) == {1, 3} and all(v > 0 for v in verify.values())
