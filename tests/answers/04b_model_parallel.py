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

    # ------------------------------------------------------------------ tensor parallelism (section 3)

    # ------------------------------------------------------------------ pipeline (section 4)

]
