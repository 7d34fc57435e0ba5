"""Recorded answers for 07b_serving: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong  # noqa: F401

ANSWERS = [
    # ------------------------------------------------------------------ load and metrics (md-07b-load)
    # ------------------------------------------------------------------ prefix caching (md-07b-prefix)
    # ------------------------------------------------------------------ speculative decoding (md-07b-spec)
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
