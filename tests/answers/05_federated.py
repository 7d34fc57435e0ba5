"""Recorded answers for 05_federated: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ partition
    Wrong("partition", "splits the IID indices in order, without shuffling", visible=True,
          replace=[("order = np.random.default_rng(seed).permutation(len(labels))", "order = np.arange(len(labels))")]),
    Wrong("partition", "draws one set of Dirichlet shares for all classes, so every car gets the same mix",
          visible=True,
          replace=[("            shares = rng.dirichlet(np.full(n_clients, alpha))\n", ""),
                   ("        parts = [[] for _ in range(n_clients)]\n",
                    "        parts = [[] for _ in range(n_clients)]\n"
                    "        shares = rng.dirichlet(np.full(n_clients, alpha))\n")]),
    Wrong("partition", "never redraws, so a car can end up with fewer than min_size samples", visible=True,
          replace=[("        if min(len(p) for p in result) >= min_size:\n            return result\n",
                    "        return result\n")]),
    Wrong("partition", "an unseeded generator for the Dirichlet draws", visible=True,
          replace=[("    rng = np.random.default_rng(seed)\n", "    rng = np.random.default_rng()\n")]),
    Wrong("partition", "cuts at every cumulative share, including the last (off by one)", visible=True,
          replace=[("enumerate(np.split(idx, (np.cumsum(shares)[:-1] * len(idx))",
                    "enumerate(np.split(idx, (np.cumsum(shares) * len(idx))")]),
    Right("partition", "shuffles in place and cuts with a while loop", source='''def iid_partition(labels, n_clients, seed=0):
    if not 1 <= n_clients <= len(labels):
        raise ValueError("bad n_clients")
    order = np.arange(len(labels))
    np.random.default_rng(seed).shuffle(order)
    return [np.sort(part) for part in np.array_split(order, n_clients)]


def dirichlet_partition(labels, n_clients, alpha, seed=0, min_size=10):
    labels = np.asarray(labels)
    if alpha <= 0 or n_clients < 1 or n_clients * min_size > len(labels):
        raise ValueError("bad arguments")
    rng = np.random.default_rng(seed)
    tries = 0
    while tries < 1000:
        tries += 1
        owner = np.empty(len(labels), dtype=int)
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_clients))[:-1] * len(idx)).astype(int)
            for client, piece in enumerate(np.split(idx, cuts)):
                owner[piece] = client
        parts = [np.flatnonzero(owner == client) for client in range(n_clients)]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError("no partition found")
'''),

    # ------------------------------------------------------------------ fedavg
    Wrong("fedavg", "averages the clients equally, ignoring their number of examples", visible=True,
          replace=[("state[key].double() * (n / total)", "state[key].double() / len(updates)")]),
    Wrong("fedavg", "returns float64 tensors: forgets to convert back to the clients' dtype", visible=True,
          replace=[(".to(updates[0][0][key].dtype)", "")]),
    Wrong("fedavg", "integer division of the example counts", visible=True,
          replace=[("state[key].double() * (n / total)", "state[key].double() * (n // total)")]),
    Wrong("fedavg", "accumulates into the first client's tensors, changing the clients' updates in place",
          source='''def fedavg(updates):
    if not updates:
        raise ValueError("no updates")
    total = sum(n for _, n in updates)
    result = updates[0][0]
    for key in result:
        result[key] *= updates[0][1] / total
        for state, n in updates[1:]:
            result[key] += state[key] * (n / total)
    return result
'''),
    Wrong("fedavg", "weights by the example counts but forgets to divide by their total", visible=True,
          replace=[("state[key].double() * (n / total)", "state[key].double() * n")]),
    Right("fedavg", "stacks each key and weights it with a tensor of shares", source='''def fedavg(updates):
    if len(updates) == 0:
        raise ValueError("no updates")
    counts = torch.tensor([float(n) for _, n in updates], dtype=torch.float64)
    if counts.sum() <= 0:
        raise ValueError("no examples")
    shares = counts / counts.sum()
    averaged = {}
    for key, first in updates[0][0].items():
        stacked = torch.stack([state[key].double() for state, _ in updates])
        averaged[key] = torch.tensordot(shares, stacked, dims=1).to(first.dtype)
    return averaged
'''),

    # ------------------------------------------------------------------ client
    Wrong("client", "trains a fresh model: forgets to load the global weights", visible=True,
          replace=[('    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())\n    x, y', "    x, y")]),
    Wrong("client", "seeds local training with 0 instead of the round number", visible=True,
          replace=[('0.0)), seed=int(config["server-round"]))\n    content', "0.0)), seed=0)\n    content")]),
    Wrong("client", "ignores FedProx's proximal-mu from the config", visible=True,
          replace=[('\n                           mu=float(config.get("proximal-mu", 0.0))', "\n                           mu=0.0")]),
    Wrong("client", "reports the whole training set's size as num-examples", visible=True,
          replace=[('"num-examples": len(y)})})\n    return', '"num-examples": len(train_labels)})})\n    return')]),
    Wrong("client", "reads config['local_epochs'] for 'local-epochs' (KeyError)", visible=True,
          replace=[('\n    loss = ref.local_train(model, x, y, epochs=int(config["local-epochs"])',
                    '\n    loss = ref.local_train(model, x, y, epochs=int(config["local_epochs"])')]),
    Right("client", "reads the config with get(), counts len(x), builds the reply in steps", source='''def client_train(msg, context):
    config = msg.content["config"]
    weights = msg.content["arrays"].to_torch_state_dict()
    model = digit_mlp(ref.HIDDEN, seed=0)
    model.load_state_dict(weights)
    x, y = ref.client_data(context, config)
    loss = ref.local_train(model, x, y, epochs=int(config.get("local-epochs", 1)), lr=float(config.get("lr", 0.1)),
                           mu=float(config.get("proximal-mu", 0.0)), seed=int(config.get("server-round", 0)))
    metrics = MetricRecord({"train_loss": float(loss), "num-examples": int(x.shape[0])})
    content = RecordDict()
    content["arrays"] = ArrayRecord(model.state_dict())
    content["metrics"] = metrics
    return Message(content, reply_to=msg)
'''),

    # ------------------------------------------------------------------ fedprox
    Wrong("fedprox", "forgets the 1/2: mu * ||w - g||^2", visible=True,
          replace=[("return mu / 2 * sum(", "return mu * sum(")]),
    Wrong("fedprox", "the norm instead of the squared norm", visible=True,
          replace=[("((w - g) ** 2).sum()", "(w - g).norm()")]),
    Wrong("fedprox", "detaches the weights, so the term has no gradient", visible=True,
          replace=[("((w - g) ** 2).sum()", "((w.detach() - g) ** 2).sum()")]),
    Wrong("fedprox", "the mean of the squared differences instead of their sum", visible=True,
          replace=[("((w - g) ** 2).sum()", "((w - g) ** 2).mean()")]),
    Wrong("fedprox", "returns a float via .item(): no gradient", visible=True,
          replace=[("for w, g in zip(model.parameters(), global_params))",
                    "for w, g in zip(model.parameters(), global_params)).item()")]),
    Right("fedprox", "returns a constant 0 for mu == 0 (local_train adds the term only when mu > 0)",
          source='''def proximal_term(model, global_params, mu):
    if mu == 0:
        return torch.tensor(0.)
    return mu / 2 * sum(((w - g) ** 2).sum() for w, g in zip(model.parameters(), global_params))
'''),
    Right("fedprox", "an explicit loop with torch.sum and pow", source='''def proximal_term(model, global_params, mu):
    total = 0.0
    for w, g in zip(model.parameters(), global_params):
        total = total + torch.sum((w - g).pow(2))
    return 0.5 * mu * total
'''),

    # ------------------------------------------------------------------ dropouts
    Wrong("dropouts", "skips the round when exactly min_replies arrived (<= for <)", visible=True,
          replace=[("if len(arrived) < max(min_replies, 1):", "if len(arrived) <= max(min_replies, 1):")]),
    Wrong("dropouts", "reports every car asked, not the replies that arrived, as used", visible=True,
          replace=[("\n    return fedavg(arrived), len(arrived)", "\n    return fedavg(arrived), len(replies)")]),
    Wrong("dropouts", "with min_replies=0 and no replies, averages nothing (fedavg of an empty list)", visible=True,
          replace=[("if len(arrived) < max(min_replies, 1):", "if len(arrived) < min_replies:")]),
    Wrong("dropouts", "returns None instead of the old global model on a skipped round", visible=True,
          replace=[("        return global_state, 0\n", "        return None, 0\n")]),
    Right("dropouts", "counts the replies in a loop", source='''def fedavg_available(global_state, replies, min_replies):
    arrived = []
    for reply in replies:
        if reply is not None:
            arrived.append(reply)
    if not arrived or len(arrived) < min_replies:
        return global_state, 0
    return fedavg(arrived), len(arrived)
'''),

    # ------------------------------------------------------------------ strategies (server optimisers)
    Wrong("server_optimizer", "flips the pseudo-gradient: current - averaged, a gradient's sign (as FedAvgM "
          "stores it) where FedYogi steps along averaged - current", visible=True,
          replace=[("delta = averaged[key] - w", "delta = w - averaged[key]")]),
    Wrong("server_optimizer", "Adam's second moment where Yogi's sign rule is asked (equal in round 1, apart "
          "from round 2)", visible=True,
          replace=[('v[key] = state["v"][key] - (1 - beta_2) * delta**2 * torch.sign(state["v"][key] - delta**2)',
                    'v[key] = beta_2 * state["v"][key] + (1 - beta_2) * delta**2')]),
    Wrong("server_optimizer", "puts tau inside the square root", visible=True,
          replace=[("(torch.sqrt(v[key]) + tau)", "torch.sqrt(v[key] + tau)")]),
    Wrong("server_optimizer", "starts m and v at zero every round: the state is not carried between rounds",
          visible=True, replace=[("    if state is None:\n", "    if True:  # fresh moments\n")]),
    Wrong("server_optimizer", "adds Adam's bias correction (Kingma and Ba's alpha_t, counting rounds in the "
          "state), which Flower's FedYogi does not do", visible=True, source='''def fedyogi_step(current, averaged, state, eta=1e-2, beta_1=0.9, beta_2=0.99, tau=1e-3):
    if state is None:
        state = {"m": {k: torch.zeros_like(x) for k, x in current.items()},
                 "v": {k: torch.zeros_like(x) for k, x in current.items()}, "t": 0}
    t = state["t"] + 1
    eta_t = eta * (1 - beta_2**t) ** 0.5 / (1 - beta_1**t)
    new, m, v = {}, {}, {}
    for key, w in current.items():
        delta = averaged[key] - w
        m[key] = beta_1 * state["m"][key] + (1 - beta_1) * delta
        v[key] = state["v"][key] - (1 - beta_2) * delta**2 * torch.sign(state["v"][key] - delta**2)
        new[key] = w + eta_t * m[key] / (torch.sqrt(v[key]) + tau)
    return new, {"m": m, "v": v, "t": t}
'''),
    Wrong("server_optimizer", "forgets the (1 - beta_1) factor of the momentum (FedAvgM's buffer has none; "
          "FedOpt's has it)", visible=True,
          replace=[('m[key] = beta_1 * state["m"][key] + (1 - beta_1) * delta',
                    'm[key] = beta_1 * state["m"][key] + delta')]),
    Wrong("server_optimizer", "updates m and v in place in the state it was given",
          source='''def fedyogi_step(current, averaged, state, eta=1e-2, beta_1=0.9, beta_2=0.99, tau=1e-3):
    if state is None:
        state = {"m": {k: torch.zeros_like(x) for k, x in current.items()},
                 "v": {k: torch.zeros_like(x) for k, x in current.items()}}
    new = {}
    for key, w in current.items():
        delta = averaged[key] - w
        state["m"][key].mul_(beta_1).add_((1 - beta_1) * delta)
        state["v"][key].sub_((1 - beta_2) * delta**2 * torch.sign(state["v"][key] - delta**2))
        new[key] = w + eta * state["m"][key] / (state["v"][key].sqrt() + tau)
    return new, state
'''),
    Right("server_optimizer", "computes in float64 with torch.where for Yogi's sign, and dict comprehensions",
          source='''def fedyogi_step(current, averaged, state, eta=1e-2, beta_1=0.9, beta_2=0.99, tau=1e-3):
    m_prev = state["m"] if state else {k: torch.zeros_like(x) for k, x in current.items()}
    v_prev = state["v"] if state else {k: torch.zeros_like(x) for k, x in current.items()}
    delta = {k: averaged[k].double() - current[k].double() for k in current}
    m = {k: beta_1 * m_prev[k].double() + (1 - beta_1) * delta[k] for k in current}
    v = {}
    for k in current:
        grow = torch.where(delta[k] ** 2 > v_prev[k].double(), 1.0, -1.0)
        v[k] = v_prev[k].double() + (1 - beta_2) * delta[k] ** 2 * grow
    new = {k: (current[k].double() + eta * m[k] / (v[k].sqrt() + tau)).to(current[k].dtype) for k in current}
    return new, {"m": m, "v": v}
'''),

    # ------------------------------------------------------------------ evaluation and personalisation
    Wrong("personalise", "fine-tunes every layer: never freezes the body", visible=True,
          replace=[("    for p in model.parameters():\n        p.requires_grad_(False)\n", "")]),
    Wrong("personalise", "freezes the head and trains the body instead (the two flags swapped)", visible=True,
          replace=[("        p.requires_grad_(False)\n", "        p.requires_grad_(True)\n"),
                   ("    for p in model.net[-1].parameters():\n        p.requires_grad_(True)\n",
                    "    for p in model.net[-1].parameters():\n        p.requires_grad_(False)\n")]),
    Wrong("personalise", "'freezes' the body with eval(): eval mode switches dropout and batch norm, "
          "not gradients",
          visible=True,
          replace=[("    for p in model.parameters():\n        p.requires_grad_(False)\n",
                    "    model.net[:-1].eval()  # freeze the body\n")]),
    Wrong("personalise", "unfreezes the head's weight but not its bias, which carries the car's digit mix",
          visible=True,
          replace=[("    for p in model.net[-1].parameters():\n        p.requires_grad_(True)\n",
                    "    model.net[-1].weight.requires_grad_(True)\n")]),
    Wrong("personalise", "load_state_dict(assign=True): trains the global state's own tensors, changing it "
          "in place", visible=True,
          replace=[("model.load_state_dict(model_state)",
                    "model.load_state_dict(model_state, assign=True)")]),
    Wrong("personalise", "ignores the seed: always shuffles with seed 0",
          replace=[("lr=lr, seed=seed)\n", "lr=lr, seed=0)\n")]),
    Wrong("personalise", "ignores epochs: one pass over the car's digits",
          replace=[("epochs=epochs, lr=lr, seed=seed)\n", "epochs=1, lr=lr, seed=seed)\n")]),
    Right("personalise", "an optimiser over the head's parameters only, in a loop of its own",
          source='''def personalise_head(model_state, x, y, epochs=5, lr=0.1, seed=0):
    model = digit_mlp(ref.HIDDEN, seed=0)
    model.load_state_dict(model_state)
    optimiser = torch.optim.SGD(model.net[-1].parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(32):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()
    return {k: v.clone() for k, v in model.state_dict().items()}
'''),
    Right("personalise", "computes the body's features once without gradients, then trains the head on them",
          source='''def personalise_head(model_state, x, y, epochs=5, lr=0.1, seed=0):
    model = digit_mlp(ref.HIDDEN, seed=0)
    model.load_state_dict(model_state)
    with torch.no_grad():
        features = model.net[:-1](x)
    ref.local_train(model.net[-1], features, y, epochs=epochs, lr=lr, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
'''),
]
