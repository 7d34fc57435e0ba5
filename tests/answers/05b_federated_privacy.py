"""Recorded answers for 05b_federated_privacy: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ privacy
    Wrong("privacy", "clips each tensor to the norm separately", visible=True,
          source='''def clip_update(state, reference, clip_norm):
    if clip_norm <= 0:
        raise ValueError("clip_norm must be positive")
    out = {}
    for k in reference:
        delta = state[k] - reference[k]
        norm = delta.norm().item()
        out[k] = reference[k] + delta * (min(1.0, clip_norm / norm) if norm > 0 else 1.0)
    return out


def client_mask(u, n_clients, shape, seeds, modulus=2**32):
    if not 0 <= u < n_clients:
        raise ValueError("bad car")
    mask = torch.zeros(shape, dtype=torch.int64)
    for v in range(n_clients):
        if v != u:
            shared = ref.pair_mask(seeds(u, v), shape, modulus)
            mask = (mask + shared) % modulus if u < v else (mask - shared) % modulus
    return mask
'''),
    Wrong("privacy", "always scales the update to the clip norm, also a small one", visible=True,
          replace=[("min(1.0, clip_norm / norm)", "clip_norm / norm")]),
    Wrong("privacy", "clips the weights themselves, not the update from the reference", visible=True,
          replace=[("delta = {k: state[k] - reference[k] for k in reference}", "delta = {k: state[k] for k in reference}"),
                   ("return {k: reference[k] + delta[k] * scale for k in reference}",
                    "return {k: delta[k] * scale for k in reference}")]),
    Wrong("privacy", "a trusted dealer: random masks with the last one set to cancel, not pairwise", visible=True,
          replace=[('''    mask = torch.zeros(shape, dtype=torch.int64)
    for v in range(n_clients):
        if v != u:
            shared = ref.pair_mask(seeds(u, v), shape, modulus)
            mask = (mask + shared) % modulus if u < v else (mask - shared) % modulus
    return mask''', '''    generator = torch.Generator().manual_seed(0)
    masks = [torch.randint(0, modulus, shape, generator=generator) for _ in range(n_clients - 1)]
    masks.append((-sum(masks)) % modulus)
    return masks[u]''')]),
    Wrong("privacy", "signs swapped: the larger index adds, the smaller subtracts", visible=True,
          replace=[("(mask + shared) % modulus if u < v else (mask - shared) % modulus",
                    "(mask - shared) % modulus if u < v else (mask + shared) % modulus")]),
    Wrong("privacy", "no reduction modulo R after subtracting: negative values", visible=True,
          replace=[("(mask - shared) % modulus", "mask - shared")]),
    Wrong("privacy", "real-valued Gaussian masks (not integers mod R)", visible=True,
          replace=[('''    mask = torch.zeros(shape, dtype=torch.int64)
    for v in range(n_clients):
        if v != u:
            shared = ref.pair_mask(seeds(u, v), shape, modulus)
            mask = (mask + shared) % modulus if u < v else (mask - shared) % modulus''', '''    mask = torch.zeros(shape, dtype=torch.float64)
    for v in range(n_clients):
        if v != u:
            generator = torch.Generator().manual_seed(seeds(u, v))
            shared = torch.randn(shape, generator=generator, dtype=torch.float64)
            mask = mask + shared if u < v else mask - shared''')]),
    Wrong("privacy", "builds every car's mask from every pair's seed and picks car u's", visible=True,
          replace=[('''    mask = torch.zeros(shape, dtype=torch.int64)
    for v in range(n_clients):
        if v != u:
            shared = ref.pair_mask(seeds(u, v), shape, modulus)
            mask = (mask + shared) % modulus if u < v else (mask - shared) % modulus
    return mask''', '''    masks = [torch.zeros(shape, dtype=torch.int64) for _ in range(n_clients)]
    for i in range(n_clients):
        for j in range(i + 1, n_clients):
            shared = ref.pair_mask(seeds(i, j), shape, modulus)
            masks[i] = (masks[i] + shared) % modulus
            masks[j] = (masks[j] - shared) % modulus
    return masks[u]''')]),
    Right("privacy", "adds and subtracts all pair masks, reduces once with torch.remainder", source='''def clip_update(state, reference, clip_norm):
    if clip_norm <= 0:
        raise ValueError("clip_norm must be positive")
    delta = {k: (state[k] - reference[k]).double() for k in reference}
    norm = float(torch.cat([d.flatten() for d in delta.values()]).norm())
    factor = clip_norm / norm if norm > clip_norm else 1.0
    return {k: (reference[k].double() + delta[k] * factor).to(state[k].dtype) for k in reference}


def client_mask(u, n_clients, shape, seeds, modulus=2**32):
    if u < 0 or u >= n_clients:
        raise ValueError("no such car")
    plus = sum((ref.pair_mask(seeds(u, v), shape, modulus) for v in range(u + 1, n_clients)),
               torch.zeros(shape, dtype=torch.int64))
    minus = sum((ref.pair_mask(seeds(u, v), shape, modulus) for v in range(u)), torch.zeros(shape, dtype=torch.int64))
    return torch.remainder(plus - minus, modulus)
'''),

    # ------------------------------------------------------------------ secure aggregation (SecAgg+)

    # ------------------------------------------------------------------ differential privacy

    # ------------------------------------------------------------------ attacks and robust aggregation
    Wrong("robust", "scores with all n - 1 other models, not the n - f - 2 nearest", visible=True,
          replace=[("[:, : n - f - 2]", "[:, : n - 1]")]),
    Wrong("robust", "counts each model as its own nearest neighbour (distance 0 takes a place)", visible=True,
          replace=[('    squared.fill_diagonal_(float("inf"))  # a model is not its own neighbour\n', "")]),
    Wrong("robust", "sums plain distances, not squared ones", visible=True,
          replace=[("squared = torch.cdist(vectors, vectors) ** 2",
                    "squared = torch.cdist(vectors, vectors)")]),
    Wrong("robust", "returns the index of the chosen model, not the model", visible=True,
          replace=[("return states[int(torch.argmin(scores))]", "return int(torch.argmin(scores))")]),
    Wrong("robust", "keeps the model with the highest score", visible=True,
          replace=[("torch.argmin(scores)", "torch.argmax(scores)")]),
    Wrong("robust", "n - f neighbours (forgets the 2)", visible=True,
          replace=[("[:, : n - f - 2]", "[:, : n - f]")]),
    Wrong("robust", "no check of n > 2f + 2", visible=True,
          replace=[("    if f < 0 or n <= 2 * f + 2:\n"
                    "        raise ValueError(f\"Krum needs f >= 0 and n > 2f + 2, got f={f} and n={n}\")\n", "")]),
    Right("robust", "a loop over pairs with squared norms, sorted per model",
          source='''def krum_select(states, f):
    n = len(states)
    if f < 0 or 2 * f + 2 >= n:
        raise ValueError("Krum needs n > 2f + 2")
    flat = [torch.cat([t.double().reshape(-1) for t in s.values()]) for s in states]
    best, best_score = None, float("inf")
    for i in range(n):
        d = sorted(float(((flat[i] - flat[j]) ** 2).sum()) for j in range(n) if j != i)
        score = sum(d[: n - f - 2])
        if score < best_score:
            best, best_score = i, score
    return states[best]
'''),

    # ------------------------------------------------------------------ the project
]
