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

    # ------------------------------------------------------------------ pipeline (section 4)

]
