"""Recorded answers for 04b_model_parallel: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ sharding
    Wrong("sharding", "stage 1 already shards the gradients (stages off by one)", visible=True,
          replace=[("gradients = 2 * n_params / (world if stage >= 2 else 1)",
                    "gradients = 2 * n_params / (world if stage >= 1 else 1)")]),
    Wrong("sharding", "Adam state of 8 bytes: forgets the fp32 master weights", visible=True,
          replace=[("optimizer = 12 * n_params", "optimizer = 8 * n_params")]),
    Wrong("sharding", "bubble (p - 1) / m", visible=True,
          replace=[("return (stages - 1) / (micro_batches + stages - 1)", "return (stages - 1) / micro_batches")]),
    Wrong("sharding", "no check for a world below 1",
          replace=[('    if world < 1:\n        raise ValueError(f"world must be at least 1, got {world}")\n', "")]),
    Wrong("sharding", "stage 3 shards only the weights and optimizer state", visible=True,
          replace=[("gradients = 2 * n_params / (world if stage >= 2 else 1)",
                    "gradients = 2 * n_params / (world if stage == 2 else 1)")]),
    Right("sharding", "bytes per part and a count of sharded parts", replace=[(
        '''    optimizer = 12 * n_params / (world if stage >= 1 else 1)
    gradients = 2 * n_params / (world if stage >= 2 else 1)
    weights = 2 * n_params / (world if stage >= 3 else 1)
    return weights + gradients + optimizer''',
        '''    parts = [12, 2, 2]  # optimizer, gradients, weights: sharded in this order
    return n_params * (sum(parts[:stage]) / world + sum(parts[stage:]))''')]),
    Wrong("sharding", "only stages above 3 refused: stage -1 slips through", visible=True,
          replace=[("    if stage not in (0, 1, 2, 3):", "    if stage > 3:")]),


    # ------------------------------------------------------------------ fsdp (section 2)
    Wrong("fsdp", "only the root is sharded: one group of every parameter, all gathered at once", visible=True,
          replace=[("""    for layer in model.net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
""", "")]),
    Wrong("fsdp", "the layers are sharded but the root is forgotten", visible=True,
          replace=[("    fully_shard(model, mesh=mesh)\n", "")]),
    Wrong("fsdp", "the optimizer is built before fully_shard: it holds the replaced parameters", visible=True,
          replace=[("    optimizer = torch.optim.Adam(model.parameters(), lr=lr)\n", ""),
                   ("    mesh = init_device_mesh(", "    optimizer = torch.optim.Adam(model.parameters(), lr=lr)\n"
                                                   "    mesh = init_device_mesh(")]),
    Wrong("fsdp", "each rank returns its own loss, not averaged over the ranks", visible=True,
          replace=[("        dist.all_reduce(mean, op=dist.ReduceOp.AVG)\n", "")]),
    Wrong("fsdp", "every rank trains on the whole batch (FSDP taken for model parallelism only)",
          visible=True,
          replace=[("model(x.chunk(world)[rank]), y.chunk(world)[rank])", "model(x), y)")]),
    Wrong("fsdp", "the root is sharded before its layers (top-down)", visible=True,
          replace=[("    fully_shard(model, mesh=mesh)\n", ""),
                   ("    for layer in model.net:",
                    "    fully_shard(model, mesh=mesh)\n    for layer in model.net:")]),
    Right("fsdp", "rows dealt out strided, x[rank::world]: another equal share of the same batch",
          replace=[("model(x.chunk(world)[rank]), y.chunk(world)[rank])",
                    "model(x[rank::world]), y[rank::world])")]),
    Right("fsdp", "no explicit mesh: on a machine without a GPU fully_shard's default is the CPU mesh",
          replace=[("            fully_shard(layer, mesh=mesh)", "            fully_shard(layer)"),
                   ("    fully_shard(model, mesh=mesh)", "    fully_shard(model)")]),
    Right("fsdp", "the loss summed over the ranks, then divided by the world size",
          replace=[("        dist.all_reduce(mean, op=dist.ReduceOp.AVG)\n",
                    "        dist.all_reduce(mean)\n        mean /= world\n")]),
    Wrong("fsdp", "no optimizer.zero_grad(): gradients pile up from step to step", visible=True,
          replace=[("        optimizer.zero_grad()\n", "")]),
    Right("fsdp", "the hint's lines as typed: F.cross_entropy (F imported at the top of the notebook)",
          replace=[("torch.nn.functional.cross_entropy(", "F.cross_entropy(")]),
    Right("fsdp", "an extra forward per step under no_grad to log the accuracy",
          replace=[("        optimizer.step()\n",
                    "        optimizer.step()\n"
                    "        with torch.no_grad():\n"
                    "            hits = model(x.chunk(world)[rank]).argmax(1) == y.chunk(world)[rank]\n"
                    "        print(f'accuracy {hits.float().mean().item():.2f}')\n")]),
    Right("fsdp", "fully_shard(model.net) as the root: DigitMLP keeps every parameter in .net",
          replace=[("    fully_shard(model, mesh=mesh)\n", "    fully_shard(model.net, mesh=mesh)\n")]),

    # ------------------------------------------------------------------ tensor parallelism (section 3)
    Wrong("tensor_parallel", "b2 added on every rank before the sum, so the output carries it world times",
          visible=True, replace=[('    return tp.g(partial) + shards["b2"]\n    ### END',
                                  '    return tp.g(partial + shards["b2"])\n    ### END')]),
    Wrong("tensor_parallel", "second layer split by rows as well (w2[mine]): both layers 'column parallel'",
          visible=True, replace=[('"w2": w2[:, mine]', '"w2": w2[mine]')]),
    Wrong("tensor_parallel", "all-reduce after the first layer too, 'sync everything' as in data parallelism",
          visible=True, replace=[('    hidden = F.gelu(F.linear(x, shards["w1"], shards["b1"]))',
                                  '    hidden = F.gelu(tp.g(F.linear(x, shards["w1"], shards["b1"])))')]),
    Wrong("tensor_parallel", "all-reduce after the first layer instead of the second", visible=True,
          replace=[('    hidden = F.gelu(F.linear(x, shards["w1"], shards["b1"]))',
                    '    hidden = F.gelu(tp.g(F.linear(x, shards["w1"], shards["b1"])))'),
                   ('    return tp.g(partial) + shards["b2"]\n    ### END',
                    '    return partial + shards["b2"]\n    ### END')]),
    Wrong("tensor_parallel", "shards of the wrong dimension: w1 cut by its columns (the input features)",
          visible=True, replace=[('"w1": w1[mine]', '"w1": w1[:, mine]')]),
    Wrong("tensor_parallel", "no f: the input's gradient is only this rank's share of it", visible=True,
          replace=[("    x = tp.f(x)\n", "")]),
    Wrong("tensor_parallel", "torch.distributed.nn's differentiable all_reduce as g: its backward all-reduces"
          " the gradient again, multiplying it by the world size", visible=True,
          replace=[('    return tp.g(partial) + shards["b2"]\n    ### END',
                    '    from torch.distributed.nn.functional import all_reduce\n'
                    '    return all_reduce(partial) + shards["b2"]\n    ### END')]),
    Wrong("tensor_parallel", "b2 added on rank 0 only, before the sum: right output, but rank 1's copy of b2 "
          "gets no gradient", visible=True,
          replace=[('    return tp.g(partial) + shards["b2"]\n    ### END',
                    '    if dist.get_rank() == 0:\n        partial = partial + shards["b2"]\n'
                    '    return tp.g(partial)\n    ### END')]),
    Wrong("tensor_parallel", "assumes two ranks: n = hidden // 2",
          replace=[("    n = hidden // world\n", "    n = hidden // 2\n")]),
    Right("tensor_parallel", "torch.chunk along the split dimension",
          replace=[('    return {"w1": w1[mine], "b1": b1[mine], "w2": w2[:, mine], "b2": b2}',
                    '    return {"w1": w1.chunk(world, dim=0)[rank], "b1": b1.chunk(world)[rank],\n'
                    '            "w2": w2.chunk(world, dim=1)[rank], "b2": b2}')]),
    Right("tensor_parallel", "Tensor.narrow instead of a slice",
          replace=[('    return {"w1": w1[mine], "b1": b1[mine], "w2": w2[:, mine], "b2": b2}',
                    '    start = rank * n\n'
                    '    return {"w1": w1.narrow(0, start, n), "b1": b1.narrow(0, start, n),\n'
                    '            "w2": w2.narrow(1, start, n), "b2": b2}')]),
    Right("tensor_parallel", "in-place dist.all_reduce for g (autograd sees no op: identity backward)",
          replace=[('    return tp.g(partial) + shards["b2"]\n    ### END',
                    '    dist.all_reduce(partial)\n    return partial + shards["b2"]\n    ### END')]),
    Right("tensor_parallel", "all_reduce imported by name for g (from torch.distributed import all_reduce)",
          replace=[('    return tp.g(partial) + shards["b2"]\n    ### END',
                    '    from torch.distributed import all_reduce\n    all_reduce(partial)\n'
                    '    return partial + shards["b2"]\n    ### END')]),

    # ------------------------------------------------------------------ pipeline (section 4)
    Wrong("schedule_1f1b", "warm-up of stages - stage forwards, then forward before backward: one "
          "micro-batch too many in flight", visible=True,
          replace=[("warmup = stages - 1 - stage", "warmup = stages - stage")]),
    Wrong("schedule_1f1b", "warm-up counted from the wrong end: stage s warms up with s forwards",
          visible=True, replace=[("warmup = stages - 1 - stage", "warmup = stage")]),
    Wrong("schedule_1f1b", "GPipe's order: every forward, then every backward", visible=True,
          replace=[('    for i in range(micro_batches - warmup):\n'
                    '        actions += [("F", warmup + i), ("B", i)]\n'
                    '    actions += [("B", i) for i in range(micro_batches - warmup, micro_batches)]\n',
                    '    actions = [("F", i) for i in range(micro_batches)]\n'
                    '    actions += [("B", i) for i in range(micro_batches)]\n')]),
    Wrong("schedule_1f1b", "steady state runs the backward before its forward (B then F)", visible=True,
          replace=[('actions += [("F", warmup + i), ("B", i)]', 'actions += [("B", i), ("F", warmup + i)]')]),
    Wrong("schedule_1f1b", "cool-down stops one backward short", visible=True,
          replace=[("for i in range(micro_batches - warmup, micro_batches)]",
                    "for i in range(micro_batches - warmup, micro_batches - 1)]")]),
    Wrong("schedule_1f1b", "max_in_flight counts every forward and never subtracts at a backward",
          visible=True, replace=[('held += 1 if kind == "F" else -1', 'held += 1 if kind == "F" else 0')]),
    Wrong("schedule_1f1b", "max_in_flight returns the count at the end, not the peak", visible=True,
          replace=[("    return peak\n", "    return held\n")]),
    Wrong("schedule_1f1b", "max_in_flight counts the forwards before the first backward (right for 1F1B and "
          "GPipe, wrong when the peak comes later)", visible=True,
          replace=[('        held += 1 if kind == "F" else -1\n        peak = max(peak, held)\n    return peak\n',
                    '        if kind == "B":\n            break\n        held += 1\n    return held\n')]),
    Wrong("schedule_1f1b", "no ValueError for fewer micro-batches than stages", visible=True,
          replace=[("    if micro_batches < stages:\n        raise ValueError(f\"1F1B needs micro_batches >= "
                    "stages, got {micro_batches} < {stages}\")\n", "")]),
    Wrong("schedule_1f1b", "no check that the stage is in 0..stages-1",
          replace=[("    if not 0 <= stage < stages:\n"
                    "        raise ValueError(f\"stage must be in 0..{stages - 1}, got {stage}\")\n", "")]),
    Right("schedule_1f1b", "torch's own loop: warm-up of stages - stage forwards, then backward-forward "
          "pairs; max_in_flight with itertools.accumulate",
          source='''def schedule_1f1b(stage, stages, micro_batches):
    if stage < 0 or stage >= stages:
        raise ValueError("stage out of range")
    if micro_batches < stages:
        raise ValueError("1F1B needs micro_batches >= stages")
    warmup = stages - stage
    actions = [("F", i) for i in range(warmup)]
    forward, backward = warmup, 0
    while forward < micro_batches:
        actions.append(("B", backward))
        backward += 1
        actions.append(("F", forward))
        forward += 1
    actions += [("B", i) for i in range(backward, micro_batches)]
    return actions


def max_in_flight(actions):
    from itertools import accumulate
    return max(accumulate(1 if kind == "F" else -1 for kind, _ in actions), default=0)
'''),
    Right("schedule_1f1b", "a greedy rule (forward while fewer than stages - stage are held), lists, "
          "not tuples", source='''def schedule_1f1b(stage, stages, micro_batches):
    if not 0 <= stage < stages or micro_batches < stages:
        raise ValueError("bad stage or too few micro-batches")
    limit, forward, backward, actions = stages - stage, 0, 0, []
    while backward < micro_batches:
        if forward < micro_batches and forward - backward < limit:
            actions.append(["F", forward])
            forward += 1
        else:
            actions.append(["B", backward])
            backward += 1
    return actions


def max_in_flight(actions):
    held = [0]
    for kind, _ in actions:
        held.append(held[-1] + (kind == "F") - (kind == "B"))
    return max(held)
'''),

]
