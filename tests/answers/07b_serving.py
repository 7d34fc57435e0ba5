"""Recorded answers for 07b_serving: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong  # noqa: F401

ANSWERS = [
    # ------------------------------------------------------------------ load and metrics (md-07b-load)
    Wrong("load_metrics", "TPOT divides by all n tokens, not the n - 1 after the first", visible=True,
          replace=[("tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None",
                    "tpot = (times[-1] - times[0]) / len(times) if len(times) > 1 else None")]),
    Wrong("load_metrics", "TTFT from the run's start, not from the request's send", visible=True,
          replace=[("    return times[0] - sent, tpot, gaps\n", "    return times[0], tpot, gaps\n")]),
    Wrong("load_metrics", "ITL percentiles over each request's mean gap, not over all gaps pooled",
          visible=True,
          replace=[("        gaps += request_gaps\n",
                    "        gaps += [sum(request_gaps) / len(request_gaps)] if request_gaps else []\n")]),
    Wrong("load_metrics", "goodput counts a request that meets either objective, not both", visible=True,
          replace=[("if ttft <= slo_ttft and (tpot is None or tpot <= slo_tpot):",
                    "if ttft <= slo_ttft or (tpot is None or tpot <= slo_tpot):")]),
    Wrong("load_metrics", "a one-token answer fails the TPOT objective", visible=True,
          replace=[("if ttft <= slo_ttft and (tpot is None or tpot <= slo_tpot):",
                    "if ttft <= slo_ttft and (tpot is not None and tpot <= slo_tpot):")]),
    Wrong("load_metrics", "throughput and goodput over the sum of the latencies, not the run's span",
          visible=True,
          replace=[("    span = max(r.token_times[-1] for r in done) - min(r.sent for r in done)\n",
                    "    span = sum(r.token_times[-1] - r.sent for r in done)\n")]),
    Wrong("load_metrics", "a request whose stream was cut counts as completed because tokens arrived",
          visible=True,
          replace=[("    done = [r for r in records if r.error is None]\n",
                    "    done = [r for r in records if r.token_times]\n")]),
    Wrong("load_metrics", "a one-token answer enters TPOT's percentiles as 0 (vLLM's goodput convention)",
          visible=True,
          replace=[("        if tpot is not None:\n            tpots.append(tpot)\n",
                    "        tpots.append(0.0 if tpot is None else tpot)\n")]),
    Wrong("load_metrics", "an empty list's percentiles are 0, not nan",
          replace=[("float(np.percentile(values, q)) if values else math.nan",
                    "float(np.percentile(values, q)) if values else 0.0")]),
    Right("load_metrics", "NumPy throughout: np.diff for the gaps, TPOT as their mean",
          source='''def request_metrics(sent, token_times):
    times = np.asarray(token_times, dtype=float)
    if times.size == 0:
        raise ValueError("no token")
    if times[0] < sent or np.any(np.diff(times) < 0):
        raise ValueError("token times out of order")
    gaps = np.diff(times)
    return float(times[0] - sent), (float(gaps.mean()) if gaps.size else None), gaps.tolist()


def summarize(records, slo_ttft, slo_tpot):
    if min(slo_ttft, slo_tpot) < 0:
        raise ValueError("negative objective")
    records = list(records)
    ok = [r for r in records if r.error is None]
    if len(ok) == 0:
        raise ValueError("nothing completed")
    per_request = [request_metrics(r.sent, r.token_times) for r in ok]
    ttft = np.array([m[0] for m in per_request])
    tpot = np.array([np.nan if m[1] is None else m[1] for m in per_request])
    itl = np.concatenate([np.asarray(m[2], dtype=float) for m in per_request])
    start = min(r.sent for r in ok)
    end = max(r.token_times[-1] for r in ok)
    meets = (ttft <= slo_ttft) & (np.isnan(tpot) | (tpot <= slo_tpot))
    result = {"completed": len(ok), "failed": len(records) - len(ok),
              "throughput": sum(len(r.token_times) for r in ok) / (end - start),
              "goodput": int(meets.sum()) / (end - start)}
    for name, values in (("ttft", ttft), ("tpot", tpot[~np.isnan(tpot)]), ("itl", itl)):
        result[name + "_p50"] = float(np.percentile(values, 50)) if values.size else float("nan")
        result[name + "_p99"] = float(np.percentile(values, 99)) if values.size else float("nan")
    return result
'''),
    # ------------------------------------------------------------------ prefix caching (md-07b-prefix)
    Wrong("refcount", "free puts every block back on the free list, shared or not", visible=True,
          replace=[("            self.refs[block] -= 1\n            if self.refs[block] == 0:\n"
                    "                self.free_list.append(block)\n",
                    "            self.refs[block] = 0\n            self.free_list.append(block)\n")]),
    Wrong("refcount", "fork copies: the child gets fresh blocks of its own", visible=True,
          replace=[("        for block in table:\n            self.refs[block] += 1\n"
                    "        self.tables[child], self.lengths[child] = list(table), self.lengths[parent]\n",
                    "        self.tables[child] = self._take(len(table))\n"
                    "        self.lengths[child] = self.lengths[parent]\n")]),
    Wrong("refcount", "fork shares the blocks but does not count the new holder", visible=True,
          replace=[("        for block in table:\n            self.refs[block] += 1\n", "")]),
    Wrong("refcount", "fork hands the child the parent's list itself (aliased tables)", visible=True,
          replace=[("self.tables[child], self.lengths[child] = list(table), self.lengths[parent]",
                    "self.tables[child], self.lengths[child] = table, self.lengths[parent]")]),
    Wrong("refcount", "append writes into a shared last block without copying it", visible=True,
          replace=[("        elif self.refs[table[-1]] > 1:\n"
                    "            src, dst = table[-1], self._take(1)[0]\n"
                    "            self.refs[src] -= 1\n            table[-1] = dst\n"
                    "            copy = (src, dst)\n", "")]),
    Wrong("refcount", "copy-on-write forgets to drop the old block's count", visible=True,
          replace=[("            self.refs[src] -= 1\n", "")]),
    Wrong("refcount", "copy-on-write lowers the old count before taking the fresh block", visible=True,
          replace=[("            src, dst = table[-1], self._take(1)[0]\n            self.refs[src] -= 1\n",
                    "            src = table[-1]\n            self.refs[src] -= 1\n"
                    "            dst = self._take(1)[0]\n")]),
    Wrong("refcount", "copy-on-write when the last block is shared, even when it is full",
          replace=[("        if length % self.block_size == 0:\n            table.append(self._take(1)[0])\n"
                    "        elif self.refs[table[-1]] > 1:\n",
                    "        if self.refs[table[-1]] > 1:\n"),
                   ("            copy = (src, dst)\n", "            copy = (src, dst)\n"
                    "        elif length % self.block_size == 0:\n"
                    "            table.append(self._take(1)[0])\n")]),
    Right("refcount", "frees the blocks front to back, builds new lists instead of changing them in place",
          replace=[("        for block in reversed(self.tables.pop(seq)):\n",
                    "        for block in self.tables.pop(seq):\n"),
                   ("            table[-1] = dst\n", "            self.tables[seq] = table[:-1] + [dst]\n"),
                   ("            table.append(self._take(1)[0])\n",
                    "            self.tables[seq] = table + self._take(1)\n")]),
    Right("refcount", "counts holders with a collections.Counter and integer ceiling division",
          replace=[("        self.tables[seq] = self._take(math.ceil(n_tokens / self.block_size))\n",
                    "        self.tables[seq] = self._take(-(-n_tokens // self.block_size))\n"),
                   ("        for block in table:\n            self.refs[block] += 1\n",
                    "        import collections\n"
                    "        for block, n in collections.Counter(table).items():\n"
                    "            self.refs[block] += n\n")]),
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
    Wrong("kv_int8", "divides by max|x| / 128 and does not clamp: the largest element's code 128 wraps to -128",
          visible=True, replace=[("scale = x.abs().amax(dim=-1, keepdim=True) / 127",
                                  "scale = x.abs().amax(dim=-1, keepdim=True) / 128"),
                                 ("q = torch.round(x / safe).clamp(-127, 127).to(torch.int8)",
                                  "q = torch.round(x / safe).to(torch.int8)")]),
    Wrong("kv_int8", "scales by max|x| / 255 into uint8 without a zero point: negative values wrap around",
          visible=True, replace=[("scale = x.abs().amax(dim=-1, keepdim=True) / 127",
                                  "scale = x.abs().amax(dim=-1, keepdim=True) / 255"),
                                 ("q = torch.round(x / safe).clamp(-127, 127).to(torch.int8)",
                                  "q = torch.round(x / safe).clamp(0, 255).to(torch.uint8)"),
                                 ("if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:",
                                  "if not isinstance(q, torch.Tensor) or q.dtype not in (torch.int8, torch.uint8):")]),
    Wrong("kv_int8", "truncates towards zero (.to(torch.int8)) instead of rounding to the nearest code", visible=True,
          replace=[("q = torch.round(x / safe).clamp(-127, 127).to(torch.int8)",
                    "q = (x / safe).clamp(-127, 127).to(torch.int8)")]),
    Wrong("kv_int8", "one scale for the whole tensor, broadcast to every vector", visible=True,
          replace=[("scale = x.abs().amax(dim=-1, keepdim=True) / 127",
                    "scale = (x.abs().max() / 127).expand(*x.shape[:-1], 1)")]),
    Wrong("kv_int8", "takes the absmax along the first axis (dim=0), not along each vector's last axis",
          visible=True, replace=[("scale = x.abs().amax(dim=-1, keepdim=True) / 127",
                                  "scale = x.abs().amax(dim=0, keepdim=True) / 127")]),
    Wrong("kv_int8", "drops the scale's last axis (amax without keepdim), so it no longer broadcasts per vector",
          visible=True, replace=[("scale = x.abs().amax(dim=-1, keepdim=True) / 127\n    safe = torch.where(scale > 0, scale, torch.ones_like(scale))\n    q = torch.round(x / safe)",
                                  "scale = x.abs().amax(dim=-1) / 127\n    safe = torch.where(scale > 0, scale, torch.ones_like(scale))\n    q = torch.round(x / safe[..., None])")]),
    Wrong("kv_int8", "accepts NaN and infinity (a NaN scale poisons the whole vector)",
          replace=[("    if not torch.isfinite(x).all():\n        raise ValueError(\"quantize got NaN or infinity: no finite scale fits that vector\")\n", "")]),
    Wrong("kv_int8", "keeps float16 input in float16 (no x.float()): a float16 scale, x / scale misses the nearest code",
          replace=[("    x = x.float()\n    scale = x.abs()", "    scale = x.abs()")]),
    Right("kv_int8", "multiplies by 127 / max|x|, rounds half away from zero, clips with torch.clip", replace=[
        ("    scale = x.abs().amax(dim=-1, keepdim=True) / 127\n"
         "    safe = torch.where(scale > 0, scale, torch.ones_like(scale))\n"
         "    q = torch.round(x / safe).clamp(-127, 127).to(torch.int8)\n    return q, scale\n",
         "    absmax = x.abs().max(dim=-1, keepdim=True).values\n"
         "    factor = torch.where(absmax > 0, 127 / absmax, torch.zeros_like(absmax))\n"
         "    y = x * factor\n"
         "    q = torch.clip(torch.sign(y) * torch.floor(y.abs() + 0.5), -127, 127).type(torch.int8)\n"
         "    return q, absmax / 127\n")]),
]
