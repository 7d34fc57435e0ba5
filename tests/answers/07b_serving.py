"""Recorded answers for 07b_serving: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong  # noqa: F401

ANSWERS = [
    # ------------------------------------------------------------------ load and metrics (md-07b-load)
    # ------------------------------------------------------------------ prefix caching (md-07b-prefix)
    # ------------------------------------------------------------------ speculative decoding (md-07b-spec)
    Wrong("speculative", "accepts with probability min(1, q/p): the ratio upside down", visible=True,
          replace=[("torch.rand((), generator=generator) * q[i, x] < p[i, x]",
                    "torch.rand((), generator=generator) * p[i, x] < q[i, x]")]),
    Wrong("speculative", "redraws a rejected token from p instead of norm(max(0, p - q))", visible=True,
          replace=[("rest = torch.clamp(p[i] - q[i], min=0)", "rest = p[i].clone()")]),
    Wrong("speculative", "redraws from max(0, q - p): the residual the wrong way round", visible=True,
          replace=[("rest = torch.clamp(p[i] - q[i], min=0)", "rest = torch.clamp(q[i] - p[i], min=0)")]),
    Wrong("speculative", "no bonus token when every guess is accepted", visible=True,
          replace=[("    out.append(int(torch.multinomial(p[gamma], 1, generator=generator)))\n", "")]),
    Wrong("speculative", "keeps judging the later guesses after a rejection", visible=True,
          replace=[("        out.append(int(torch.multinomial(rest / rest.sum(), 1, generator=generator)))\n"
                    "        return out\n",
                    "        out.append(int(torch.multinomial(rest / rest.sum(), 1, generator=generator)))\n")]),
    Wrong("speculative", "keeps a guess iff p(x) >= q(x), with no coin for the others", visible=True,
          replace=[("if torch.rand((), generator=generator) * q[i, x] < p[i, x]:", "if p[i, x] >= q[i, x]:")]),
    Wrong("speculative", "draws the bonus token from p[0], the first row, not p[gamma]", visible=True,
          replace=[("torch.multinomial(p[gamma], 1, generator=generator)", "torch.multinomial(p[0], 1, generator=generator)")]),
    Wrong("speculative", "draws the coin from the global random state, not the generator", visible=True,
          replace=[("torch.rand((), generator=generator) * q[i, x]", "torch.rand(()) * q[i, x]")]),
    Wrong("speculative", "does not check that the rows are distributions", visible=True,
          replace=[("        if (probs < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):\n"
                    "            raise ValueError(f\"every row of {name} must be >= 0 and sum to 1; row sums {sums.tolist()}\")\n",
                    "        pass\n")]),
    Right("speculative", "unnormalised residual with torch.where (multinomial normalises) and p[-1] for the bonus",
          replace=[("        rest = torch.clamp(p[i] - q[i], min=0)\n"
                    "        out.append(int(torch.multinomial(rest / rest.sum(), 1, generator=generator)))\n",
                    "        rest = torch.where(p[i] > q[i], p[i] - q[i], torch.zeros_like(p[i]))\n"
                    "        out.append(torch.multinomial(rest, 1, generator=generator).item())\n"),
                   ("torch.multinomial(p[gamma], 1, generator=generator)", "torch.multinomial(p[-1], 1, generator=generator)")]),
    Right("speculative", "vectorised: all coins drawn at once, the first rejection found with nonzero()", source="""def verify(p, q, draft_tokens, generator=None):
    gamma = len(draft_tokens)
    if p.ndim != 2 or q.ndim != 2 or len(p) != gamma + 1 or len(q) != gamma or p.shape[-1] != q.shape[-1]:
        raise ValueError("p must be (gamma + 1, vocab) and q (gamma, vocab)")
    for probs in (p, q):
        if probs.numel() and (probs.min() < 0 or not torch.allclose(
                probs.sum(-1).double(), torch.ones(len(probs), dtype=torch.float64), atol=1e-4)):
            raise ValueError("rows must be probability distributions")
    tokens = torch.as_tensor(list(draft_tokens), dtype=torch.long)
    coins = torch.rand(gamma, generator=generator, dtype=torch.float64)
    rows = torch.arange(gamma)
    ratio = (p[rows, tokens].double() / q[rows, tokens].double()).clamp(max=1.0)
    rejected = (coins >= ratio).nonzero()
    n = int(rejected[0]) if len(rejected) else gamma
    last = torch.clamp(p[n] - q[n], min=0) if n < gamma else p[gamma]
    token = torch.multinomial(last.double(), 1, generator=generator).item()
    return [int(x) for x in tokens[:n]] + [int(token)]
"""),
    # ------------------------------------------------------------------ int8 KV cache (md-07b-int8)
]
