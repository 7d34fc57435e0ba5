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

    # ------------------------------------------------------------------ pipeline (section 4)

]
