"""Recorded answers for 04_distributed: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong

ANSWERS = [
    # ------------------------------------------------------------------ collectives
    Wrong("collectives", "broadcast: every rank keeps its own tensor", visible=True,
          replace=[("return table[0].clone()", "return table[rank].clone()")]),
    Wrong("collectives", "all_reduce averages instead of summing", visible=True,
          replace=[("return table.sum(dim=0)\n", "return table.mean(dim=0)\n")]),
    Wrong("collectives", "all_gather sums over the wrong axis (one entry per rank)", visible=True,
          replace=[("return table.reshape(-1)", "return table.sum(dim=1)")]),
    Wrong("collectives", "reduce_scatter returns the whole sum, not this rank's piece", visible=True,
          replace=[("return table.sum(dim=0)[rank:rank + 1]", "return table.sum(dim=0)")]),
    Wrong("collectives", "reduce_scatter keeps piece rank + 1 (off by one)", visible=True,
          replace=[("return table.sum(dim=0)[rank:rank + 1]",
                    "return table.sum(dim=0)[(rank + 1) % world:(rank + 1) % world + 1]")]),
    Wrong("collectives", "an unknown collective returns None instead of raising", visible=True,
          replace=[('raise ValueError(f"unknown collective {collective!r}")', "return None")]),
    Wrong("collectives", "all_gather in reverse rank order", visible=True,
          replace=[("return table.reshape(-1)", "return table.flip(0).reshape(-1)")]),
    Wrong("collectives", "reduce_scatter returns a 0-d scalar, not a 1-element tensor", visible=True,
          replace=[("return table.sum(dim=0)[rank:rank + 1]", "return table.sum(dim=0)[rank]")]),
    Right("collectives", "closed forms, no table", source='''def predict(collective, rank, world):
    base = torch.arange(world, dtype=torch.float32)
    if collective == "broadcast":
        return base.clone()
    if collective == "all_reduce":
        return world * base + 10 * world * (world - 1) / 2
    if collective == "all_gather":
        return torch.cat([base + 10 * r for r in range(world)])
    if collective == "reduce_scatter":
        return torch.tensor([world * rank + 10 * world * (world - 1) / 2])
    raise ValueError(collective)
'''),

    # ------------------------------------------------------------------ ring
    Wrong("ring", "calls the library's all_reduce and reports the ring's bytes without sending them", visible=True,
          source='''def ring_all_reduce(tensor):
    world = dist.get_world_size()
    result = tensor.detach().clone()
    dist.all_reduce(result)
    return result, 2 * (world - 1) * result.numel() * result.element_size() // world
'''),
    Wrong("ring", "the library's all_reduce under an imported name (from torch.distributed import all_reduce)",
          visible=True, source='''from torch.distributed import all_reduce


def ring_all_reduce(tensor):
    world = dist.get_world_size()
    result = tensor.detach().clone()
    all_reduce(result)
    return result, 2 * (world - 1) * result.numel() * result.element_size() // world
'''),
    Right("ring", "isend and recv imported by name (from torch.distributed import isend, recv)", replace=[
        ("    rank, world = dist.get_rank(), dist.get_world_size()\n",
         "    from torch.distributed import isend, recv\n    rank, world = dist.get_rank(), dist.get_world_size()\n"),
        ("request = dist.isend(chunks[send], dst=right)", "request = isend(chunks[send], dst=right)"),
        ("dist.recv(incoming, src=left)", "recv(incoming, src=left)")]),
    Wrong("ring", "copies instead of adding during reduce-scatter", visible=True,
          replace=[("chunks[receive].add_(incoming)", "chunks[receive].copy_(incoming)")]),
    Wrong("ring", "counts the whole tensor's bytes at every step", visible=True,
          replace=[("sent += chunks[send].numel() * chunks[send].element_size()",
                    "sent += result.numel() * result.element_size()")]),
    Wrong("ring", "works in place on the input tensor (no clone)", visible=True,
          replace=[("    result = tensor.detach().clone()\n", "    result = tensor.detach()\n")]),
    Wrong("ring", "stops after reduce-scatter: no all-gather phase", visible=True,
          replace=[('for phase in ("reduce-scatter", "all-gather"):', 'for phase in ("reduce-scatter",):')]),
    Wrong("ring", "all-gather sends chunk (r - s), one behind the finished one", visible=True,
          replace=[("send, receive = (rank + 1 - step) % world, (rank - step) % world",
                    "send, receive = (rank - step) % world, (rank - step - 1) % world")]),
    Right("ring", "non-blocking receive as well, waits on both", replace=[
        ("            request = dist.isend(chunks[send], dst=right)\n            dist.recv(incoming, src=left)\n"
         "            request.wait()\n",
         "            receiving = dist.irecv(incoming, src=left)\n            request = dist.isend(chunks[send], dst=right)\n"
         "            receiving.wait()\n            request.wait()\n")]),
    Right("ring", "batch_isend_irecv with P2POp, chunk indices from a helper", source='''def ring_all_reduce(tensor):
    rank, world = dist.get_rank(), dist.get_world_size()
    result = tensor.detach().clone()
    chunks = result.view(-1).tensor_split(world)
    sent = 0
    for phase in (0, 1):
        for step in range(world - 1):
            send = (rank - step) % world if phase == 0 else (rank + 1 - step) % world
            receive = (send - 1) % world
            incoming = torch.empty_like(chunks[receive])
            ops = [dist.P2POp(dist.isend, chunks[send], (rank + 1) % world),
                   dist.P2POp(dist.irecv, incoming, (rank - 1) % world)]
            for request in dist.batch_isend_irecv(ops):
                request.wait()
            if phase == 0:
                chunks[receive].add_(incoming)
            else:
                chunks[receive].copy_(incoming)
            sent += chunks[send].nbytes
    return result, sent
'''),

    # ------------------------------------------------------------------ cost_model
    Wrong("cost_model", "ring bytes without the 1/n: 2 (n-1) S", visible=True,
          replace=[("return 2 * (n - 1) / n * size", "return 2 * (n - 1) * size")]),
    Wrong("cost_model", "naive design sends to all n workers, itself included", visible=True,
          replace=[("return (n - 1) * size\n", "return n * size\n")]),
    Wrong("cost_model", "ring time counts n - 1 latencies (one phase only)", visible=True,
          replace=[("return 2 * (n - 1) * latency + ", "return (n - 1) * latency + ")]),
    Wrong("cost_model", "multiplies by the bandwidth instead of dividing", visible=True,
          replace=[('bytes_sent_by_busiest("ring", n, size) / bandwidth\n    ### END',
                    'bytes_sent_by_busiest("ring", n, size) * bandwidth\n    ### END')]),
    Wrong("cost_model", "no check for n < 1", visible=True,
          replace=[('    if n < 1:\n        raise ValueError(f"n must be at least 1, got {n}")\n', "")]),
    Right("cost_model", "a table of formulas", replace=[(
        '''    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if design == "ring":
        return 2 * (n - 1) / n * size
    if design == "naive":
        return (n - 1) * size
    if design == "server":
        return n * size
    raise ValueError(f"unknown design {design!r}")''',
        '''    formulas = {"ring": lambda: 2 * size * (n - 1) / n, "naive": lambda: size * (n - 1), "server": lambda: size * n}
    if n < 1 or design not in formulas:
        raise ValueError(f"bad design {design!r} or n {n}")
    return formulas[design]()''')]),

    # ------------------------------------------------------------------ average_gradients
    Wrong("average_gradients", "sums the gradients without dividing by the world size", visible=True,
          replace=[("            p.grad /= world\n", "")]),
    Wrong("average_gradients", "divides the local gradient without any all_reduce", visible=True,
          replace=[("            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)\n", "")]),
    Wrong("average_gradients", "all-reduces a copy and throws it away", visible=True,
          replace=[("            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)\n",
                    "            dist.all_reduce(p.grad.clone(), op=dist.ReduceOp.SUM)\n")]),
    Wrong("average_gradients", "divides by a hard-coded 2: fits the visible 2 ranks only",
          replace=[("p.grad /= world", "p.grad /= 2")]),
    Wrong("average_gradients", "averages the weights instead of the gradients", visible=True,
          replace=[("            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)\n            p.grad /= world",
                    "            dist.all_reduce(p.data, op=dist.ReduceOp.SUM)\n            p.data /= world")]),
    Right("average_gradients", "ReduceOp.AVG", replace=[(
        "            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)\n            p.grad /= world",
        "            dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)")]),
    Right("average_gradients", "one flat all-reduce for all gradients (a bucket by hand)", source='''def average_gradients(model):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
'''),

    # ------------------------------------------------------------------ ddp
    Wrong("ddp", "forgets sampler.set_epoch: every epoch repeats the first order", visible=True,
          replace=[("        sampler.set_epoch(epoch)\n", "")]),
    Wrong("ddp", "returns each rank's own loss, not averaged", visible=True,
          replace=[("            dist.all_reduce(mean, op=dist.ReduceOp.AVG)\n", "")]),
    Wrong("ddp", "sampler without shuffling", visible=True,
          replace=[("sampler = DistributedSampler(dataset, shuffle=True, seed=0)\n",
                    "sampler = DistributedSampler(dataset, shuffle=False)\n")]),
    Wrong("ddp", "no DDP wrapper: the ranks never average gradients", visible=True,
          replace=[("= DDP(digit_mlp(seed=0))\n", "= digit_mlp(seed=0)\n")]),
    Wrong("ddp", "the global batch on every rank (batch_per_rank * world)", visible=True,
          replace=[("loader = DataLoader(dataset, batch_size=batch_per_rank,",
                    "loader = DataLoader(dataset, batch_size=batch_per_rank * dist.get_world_size(),")]),
    Wrong("ddp", "sums the ranks' losses instead of averaging", visible=True,
          replace=[("dist.all_reduce(mean, op=dist.ReduceOp.AVG)", "dist.all_reduce(mean, op=dist.ReduceOp.SUM)")]),
    Right("ddp", "SUM then divide, zero_grad after the step, explicit rank and world", replace=[
        ("sampler = DistributedSampler(dataset, shuffle=True, seed=0)\n",
         "sampler = DistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(), seed=0)\n"),
        ("            optimizer.zero_grad()\n            loss = F.cross_entropy(model(x), y)\n"
         "            loss.backward()\n            optimizer.step()\n",
         "            loss = F.cross_entropy(model(x), y)\n            loss.backward()\n"
         "            optimizer.step()\n            optimizer.zero_grad()\n"),
        ("dist.all_reduce(mean, op=dist.ReduceOp.AVG)\n            losses.append(mean.item())",
         "dist.all_reduce(mean)\n            losses.append(mean.item() / dist.get_world_size())")]),

    # ------------------------------------------------------------------ accumulate
    Wrong("accumulate", "forgets zero_grad: the earlier step's gradients are added in", visible=True,
          replace=[("    optimizer.zero_grad()\n    last", "    last")]),
    Wrong("accumulate", "does not divide the loss by the number of micro-batches", visible=True,
          replace=[("(F.cross_entropy(model(x), y) / len(micro_batches)).backward()\n",
                    "F.cross_entropy(model(x), y).backward()\n")]),
    Wrong("accumulate", "no no_sync: all-reduces after every micro-batch", visible=True,
          replace=[("with model.no_sync() if i < last else nullcontext():", "with nullcontext():")]),
    Wrong("accumulate", "every backward inside no_sync: the gradients are never all-reduced", visible=True,
          replace=[("with model.no_sync() if i < last else nullcontext():", "with model.no_sync():")]),
    Wrong("accumulate", "steps after every micro-batch", visible=True,
          replace=[("            (F.cross_entropy(model(x), y) / len(micro_batches)).backward()\n    optimizer.step()\n",
                    "            (F.cross_entropy(model(x), y) / len(micro_batches)).backward()\n"
                    "        optimizer.step()\n")]),
    Wrong("accumulate", "forward outside no_sync, only backward inside: DDP decides in forward, so it syncs every time",
          visible=True, source='''def accumulate(model, optimizer, micro_batches):
    model.zero_grad()
    for i, (x, y) in enumerate(micro_batches):
        loss = F.cross_entropy(model(x), y) / len(micro_batches)
        if i == len(micro_batches) - 1:
            loss.backward()
        else:
            with model.no_sync():
                loss.backward()
    optimizer.step()
'''),
    Right("accumulate", "model.zero_grad, one no_sync block for all but the last micro-batch", source='''def accumulate(model, optimizer, micro_batches):
    model.zero_grad()
    *early, (x_last, y_last) = micro_batches
    with model.no_sync():
        for x, y in early:
            (F.cross_entropy(model(x), y) / len(micro_batches)).backward()
    (F.cross_entropy(model(x_last), y_last) / len(micro_batches)).backward()
    optimizer.step()
'''),

    # ------------------------------------------------------------------ bf16_hook
    Right("bf16_hook", "all_reduce imported by name (from torch.distributed import all_reduce)", replace=[
        ("    buffer = bucket.buffer()\n", "    from torch.distributed import all_reduce\n    buffer = bucket.buffer()\n"),
        ("future = dist.all_reduce(compressed, async_op=True).get_future()\n    return",
         "future = all_reduce(compressed, async_op=True).get_future()\n    return")]),
    Wrong("bf16_hook", "sums the gradients: no division by the world size", visible=True,
          replace=[("buffer.div(dist.get_world_size()).to(torch.bfloat16)", "buffer.to(torch.bfloat16)")]),
    Wrong("bf16_hook", "all-reduces the fp32 buffer: nothing compressed", visible=True,
          replace=[("buffer.div(dist.get_world_size()).to(torch.bfloat16)", "buffer.div(dist.get_world_size())")]),
    Wrong("bf16_hook", "rounds to bf16 and back before the all-reduce: bf16's error, fp32's bytes", visible=True,
          replace=[("buffer.div(dist.get_world_size()).to(torch.bfloat16)",
                    "buffer.div(dist.get_world_size()).to(torch.bfloat16).float()")]),
    Wrong("bf16_hook", "float16 instead of bfloat16", visible=True,
          replace=[("buffer.div(dist.get_world_size()).to(torch.bfloat16)",
                    "buffer.div(dist.get_world_size()).to(torch.float16)")]),
    Wrong("bf16_hook", "divides by a hard-coded 2: fits the visible 2 ranks only",
          replace=[("buffer.div(dist.get_world_size())", "buffer.div(2)")]),
    Wrong("bf16_hook", "blocking all-reduce copied into the buffer, returns nothing", visible=True,
          source='''def bf16_hook(process_group, bucket):
    buffer = bucket.buffer()
    compressed = buffer.div(dist.get_world_size()).to(torch.bfloat16)
    dist.all_reduce(compressed)
    buffer.copy_(compressed)
'''),
    Right("bf16_hook", "ReduceOp.AVG, and the bf16 sum returned for DDP to copy into the fp32 gradients",
          source='''def bf16_hook(process_group, bucket):
    compressed = bucket.buffer().to(torch.bfloat16)
    work = dist.all_reduce(compressed, op=dist.ReduceOp.AVG, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])
'''),
    Right("bf16_hook", "blocking all-reduce, then an already completed future", source='''def bf16_hook(process_group, bucket):
    buffer = bucket.buffer()
    compressed = (buffer / dist.get_world_size()).bfloat16()
    dist.all_reduce(compressed)
    done = torch.futures.Future()
    done.set_result(buffer.copy_(compressed))
    return done
'''),

    # ------------------------------------------------------------------ scaling
    Wrong("scaling", "weak scaling read like strong: efficiency divided by the growth in ranks", visible=True,
          replace=[('(ratio, ratio / grow) if mode == "strong" else (grow * ratio, ratio)', "(ratio, ratio / grow)")]),
    Wrong("scaling", "speed-up upside down: T(w) / T(w0)", visible=True,
          replace=[("ratio = step_seconds[base] / seconds", "ratio = seconds / step_seconds[base]")]),
    Wrong("scaling", "efficiency equal to the speed-up (never divided by the ranks)", visible=True,
          replace=[('(ratio, ratio / grow) if mode == "strong"', '(ratio, ratio) if mode == "strong"')]),
    Wrong("scaling", "weak speed-up without the growth in work: just T(w0) / T(w)", visible=True,
          replace=[('else (grow * ratio, ratio)', "else (ratio, ratio)")]),
    Wrong("scaling", "assumes the baseline is 1 rank (a cluster's baseline is often one node)",
          replace=[("    base = min(step_seconds)\n", "    base = 1\n")]),
    Wrong("scaling", "takes the first key as the baseline, not the smallest world",
          replace=[("    base = min(step_seconds)\n", "    base = next(iter(step_seconds))\n")]),
    Wrong("scaling", "an unknown mode is treated as weak scaling instead of raising", visible=True,
          replace=[("""    if mode not in ("strong", "weak"):
        raise ValueError(f"mode must be 'strong' or 'weak', got {mode!r}")
""", "")]),
    Right("scaling", "closed forms per mode, sorted worlds, a dict comprehension", source='''def scaling_efficiency(step_seconds, mode):
    worlds = sorted(step_seconds)
    w0, t0 = worlds[0], step_seconds[worlds[0]]
    if mode == "strong":
        return {w: (t0 / step_seconds[w], t0 * w0 / (step_seconds[w] * w)) for w in worlds}
    if mode == "weak":
        return {w: (w * t0 / (w0 * step_seconds[w]), t0 / step_seconds[w]) for w in worlds}
    raise ValueError(mode)
'''),
    Right("scaling", "throughput first: samples per second relative to the baseline", source='''def scaling_efficiency(step_seconds, mode):
    if mode not in ("strong", "weak"):
        raise ValueError(f"unknown mode {mode}")
    base = min(step_seconds)
    out = {}
    for world in step_seconds:
        work = 1 if mode == "strong" else world / base  # samples per step, relative to the baseline's
        speed_up = work * step_seconds[base] / step_seconds[world]
        out[world] = (speed_up, speed_up * base / world)
    return out
'''),

    # ------------------------------------------------------------------ commands
    Wrong("commands", "a different --rdzv_id on each node", visible=True, source='''def two_node_commands(host, port, nproc_per_node, script):
    return [["torchrun", "--nnodes=2", f"--nproc_per_node={nproc_per_node}", "--rdzv_backend=c10d",
             f"--rdzv_endpoint={host}:{port}", f"--rdzv_id=job-{node}", script] for node in range(2)]
'''),
    Wrong("commands", "--nnodes=1: each node thinks it is alone", visible=True,
          replace=[('command = ["torchrun", "--nnodes=2"', 'command = ["torchrun", "--nnodes=1"')]),
    Wrong("commands", "endpoint without the port", visible=True,
          replace=[('f"--rdzv_endpoint={host}:{port}"', 'f"--rdzv_endpoint={host}"')]),
    Wrong("commands", "one shell string per node instead of a list", visible=True,
          replace=[("return [command, list(command)]", 'return [" ".join(command), " ".join(command)]')]),
    Wrong("commands", "the world size in --nproc_per_node (2 nodes x nproc)", visible=True,
          replace=[('f"--nproc_per_node={nproc_per_node}"', 'f"--nproc_per_node={2 * nproc_per_node}"')]),
    Right("commands", "an elastic range written for a fixed count: --nnodes=2:2",
          replace=[('command = ["torchrun", "--nnodes=2"', 'command = ["torchrun", "--nnodes=2:2"')]),
    Right("commands", "static rendezvous: --master_addr, --master_port and a --node_rank per node",
          source='''def two_node_commands(host, port, nproc_per_node, script):
    return [["torchrun", "--nnodes=2", f"--node_rank={node}", f"--nproc_per_node={nproc_per_node}",
             f"--master_addr={host}", f"--master_port={port}", script] for node in range(2)]
'''),
    Right("commands", "dashed option spellings", replace=[
        ('f"--nproc_per_node={nproc_per_node}", "--rdzv_backend=c10d",',
         'f"--nproc-per-node={nproc_per_node}", "--rdzv-backend=c10d",'),
        ('f"--rdzv_endpoint={host}:{port}", "--rdzv_id=course-job"', 'f"--rdzv-endpoint={host}:{port}", "--rdzv-id=x"')]),
]
