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
    Wrong("privacy", "one seed for the whole round: every pair's mask is the same vector", visible=True,
          replace=[("shared = ref.pair_mask(seeds(u, v), shape, modulus)",
                    "shared = ref.pair_mask(2026, shape, modulus)")]),
    Wrong("privacy", "one pair's seed, seeds(u, u + 1), for every pair of car u", visible=True,
          replace=[("shared = ref.pair_mask(seeds(u, v), shape, modulus)",
                    "shared = ref.pair_mask(seeds(u, u + 1), shape, modulus)")]),
    Wrong("privacy", "a seed per car: adds its own mask, subtracts the previous car's (the sum cancels)",
          visible=True,
          replace=[('''    mask = torch.zeros(shape, dtype=torch.int64)
    for v in range(n_clients):
        if v != u:
            shared = ref.pair_mask(seeds(u, v), shape, modulus)
            mask = (mask + shared) % modulus if u < v else (mask - shared) % modulus
    return mask''', '''    own = ref.pair_mask(u + 1, shape, modulus)
    previous = ref.pair_mask((u - 1) % n_clients + 1, shape, modulus)
    return (own - previous) % modulus''')]),
    Wrong("privacy", "no sign rule: both cars of a pair add its mask", visible=True,
          replace=[("(mask + shared) % modulus if u < v else (mask - shared) % modulus",
                    "(mask + shared) % modulus")]),
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
    Wrong("accountant", "sigma not squared in the Gaussian mechanism's RDP", visible=True,
          replace=[("rdp = rounds * alpha / (2 * noise_multiplier**2)",
                    "rdp = rounds * alpha / (2 * noise_multiplier)")]),
    # Basic composition (T x one round's epsilon) is a valid but loose bound only as (T eps, T delta); at the
    # same delta it is not what composition licenses, nor the RDP accountant's number: it loses the points.
    Wrong("accountant", "basic composition: one round's epsilon times the rounds", visible=True,
          replace=[("rdp = rounds * alpha / (2 * noise_multiplier**2)", "rdp = alpha / (2 * noise_multiplier**2)"),
                   ("return float(eps[best]), float(alpha[best])",
                    "return float(rounds * eps[best]), float(alpha[best])")]),
    Wrong("accountant", "log(delta) with the wrong sign (log(1/delta) written as log(delta))", visible=True,
          replace=[("- (np.log(delta) + np.log(alpha)) / (alpha - 1)",
                    "+ (np.log(delta) - np.log(alpha)) / (alpha - 1)")]),
    Wrong("accountant", "the order with the smallest RDP (the smallest order), not the smallest epsilon",
          visible=True, replace=[("best = int(np.argmin(eps))", "best = int(np.argmin(rdp))")]),
    Wrong("accountant", "one fixed order (alpha = 32) instead of the minimum over the grid", visible=True,
          replace=[("best = int(np.argmin(eps))", "best = int(np.argmin(np.abs(alpha - 32)))")]),
    Wrong("accountant", "Mironov's Proposition 3 conversion (valid, looser), not Opacus's (Balle et al.)",
          visible=True,
          replace=[("eps = rdp + np.log((alpha - 1) / alpha) - (np.log(delta) + np.log(alpha)) / (alpha - 1)",
                    "eps = rdp + np.log(1 / delta) / (alpha - 1)")]),
    Wrong("accountant", "ignores the orders argument: always Opacus's default grid",
          replace=[("alpha = np.asarray(orders, dtype=float)\n    rdp",
                    "alpha = np.asarray(fl_privacy.OPACUS_ORDERS, dtype=float)\n    rdp")]),
    Right("accountant", "a loop over the orders with math.log, keeping the best pair",
          source='''def rdp_epsilon(noise_multiplier, rounds, delta, orders=fl_privacy.OPACUS_ORDERS):
    import math

    if noise_multiplier <= 0 or rounds < 1 or delta <= 0 or delta >= 1:
        raise ValueError("bad arguments")
    best = None
    for a in orders:
        a = float(a)
        rdp = rounds * a / (2 * noise_multiplier * noise_multiplier)
        eps = rdp + math.log(1 - 1 / a) + (math.log(1 / delta) - math.log(a)) / (a - 1)
        if best is None or eps < best[0]:
            best = (eps, a)
    return best
'''),

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
    Wrong("project", "over the byte budget: 20 rounds of all ten cars (7.9 MB), noise raised to keep epsilon", visible=True,
          replace=[("noise_multiplier=2.0", "noise_multiplier=4.0"), ("rounds=10", "rounds=20")]),
    Wrong("project", "no noise: FedAvg without the DP wrapper, so epsilon is infinite", visible=True,
          replace=[("""        return DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=2.0, clipping_norm=0.5,
                                                          num_sampled_clients=project.N_CARS)""",
                    "        return inner")]),
    Wrong("project", "noise multiplier 0 in the wrapper: clipping alone is no privacy", visible=True,
          replace=[("noise_multiplier=2.0", "noise_multiplier=0.0")]),
    Wrong("project", "a strategy that never learns: lr 1e-4 on the cars", visible=True,
          replace=[('{"lr": 0.2, "local-epochs": 2}', '{"lr": 0.0001, "local-epochs": 2}')]),
    Wrong("project", "changes the split to IID for a better score", visible=True,
          replace=[('{"lr": 0.2, "local-epochs": 2}', '{"lr": 0.2, "local-epochs": 2, "partitioning": "iid"}')]),
    Wrong("project", "samples half the cars but declares all ten to the DP wrapper: half the noise, epsilon 17.9",
          visible=True, replace=[("fraction_train=1.0", "fraction_train=0.5")]),
    Wrong("project", "example-weighted average under central DP: the noise sigma*C/m assumes a uniform one", visible=True,
          replace=[('weighted_by_key="num-cars")', 'weighted_by_key="num-examples")')]),
    Wrong("project", "FedAvgM under central DP: its momentum keeps un-noised averages (noise added after it)",
          visible=True, replace=[("inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=project.N_CARS,\n"
                                  "                       weighted_by_key=\"num-cars\")",
                                  "inner = FedAvgM(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=project.N_CARS,\n"
                                  "                        weighted_by_key=\"num-cars\", server_momentum=0.5)")]),
    Wrong("project", "returns one strategy object for every run", visible=True, source='''from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg


def submission():
    inner = FedAvg(fraction_evaluate=0.0, min_available_nodes=10, weighted_by_key="num-cars")
    strategy = DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=2.0, clipping_norm=0.5,
                                                          num_sampled_clients=10)
    return project.Submission(lambda: strategy, rounds=10, client_config={"lr": 0.2, "local-epochs": 2})
'''),
    Right("project", "FedProx (mu 0.01) with C = 1 instead of FedAvg with C = 0.5, written with a lambda", source='''from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedProx


def submission():
    return project.Submission(
        lambda: DifferentialPrivacyServerSideFixedClipping(
            FedProx(fraction_evaluate=0.0, min_available_nodes=10, weighted_by_key="num-cars", proximal_mu=0.01),
            noise_multiplier=2.0, clipping_norm=1.0, num_sampled_clients=10),
        rounds=10, client_config={"lr": 0.2, "local-epochs": 2}, name="FedProx")
'''),
]
