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
    # ------------------------------------------------------------------ speculative decoding (md-07b-spec)
    # ------------------------------------------------------------------ int8 KV cache (md-07b-int8)
]
