"""Recorded answers for 06_reliability: mistakes learners really make must lose points; other correct
answers keep them."""
from tests.answers import Right, Wrong

BYTES = "        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())\n"

ANSWERS = [
    # ------------------------------------------------------------------ failure arithmetic
    Wrong("failure_math", "multiplies the device MTBF by the number of devices", visible=True,
          replace=[("    return device_mtbf / n_devices\n", "    return device_mtbf * n_devices\n")]),
    Wrong("failure_math", "integer division of the MTBF", visible=True,
          replace=[("    return device_mtbf / n_devices\n", "    return device_mtbf // n_devices\n")]),
    Wrong("failure_math", "Young's interval without the factor 2", visible=True,
          replace=[("return math.sqrt(2 * checkpoint_cost * mtbf)\n",
                    "return math.sqrt(checkpoint_cost * mtbf)\n")]),
    Wrong("failure_math", "a failure loses the whole interval, not half on average", visible=True,
          replace=[("return checkpoint_cost / interval + (interval / 2 + restart_cost) / mtbf",
                    "return checkpoint_cost / interval + (interval + restart_cost) / mtbf")]),
    Wrong("failure_math", "forgets the restart time", visible=True,
          replace=[("return checkpoint_cost / interval + (interval / 2 + restart_cost) / mtbf",
                    "return checkpoint_cost / interval + (interval / 2) / mtbf")]),
    Wrong("failure_math", "accepts a negative device MTBF (checks only the device count)",
          replace=[("    if device_mtbf <= 0 or n_devices < 1:\n", "    if n_devices < 1:\n")]),
    Right("failure_math", "** 0.5 instead of math.sqrt",
          replace=[("return math.sqrt(2 * checkpoint_cost * mtbf)\n",
                    "return (2 * checkpoint_cost * mtbf) ** 0.5\n")]),

    # ------------------------------------------------------------------ a complete checkpoint
    Wrong("checkpoint", "does not restore the optimizer (Adam's moving averages start from zero)",
          visible=True,
          replace=[('    run.optimizer.load_state_dict(checkpoint["optimizer"])\n', "")]),
    Wrong("checkpoint", "forgets the data position (epoch, batch_index)", visible=True,
          replace=[('    run.step, run.epoch, run.batch_index = checkpoint["step"], checkpoint["epoch"], '
                    'checkpoint["batch_index"]\n', '    run.step = checkpoint["step"]\n')]),
    Wrong("checkpoint", "restores the data position but not the step counter (found by a newcomer's review)",
          visible=True,
          replace=[('    run.step, run.epoch, run.batch_index = checkpoint["step"], checkpoint["epoch"], '
                    'checkpoint["batch_index"]\n',
                    '    run.epoch, run.batch_index = checkpoint["epoch"], checkpoint["batch_index"]\n')]),
    Wrong("checkpoint", "does not restore the NumPy generator", visible=True,
          replace=[('    run.np_rng.bit_generator.state = checkpoint["rng"]["numpy"]\n', "")]),
    Wrong("checkpoint", "forgets the learning-rate scheduler",
          replace=[('    run.scheduler.load_state_dict(checkpoint["scheduler"])\n', "")]),
    Wrong("checkpoint", "stores the model object, which torch.load(weights_only=True) refuses", visible=True,
          replace=[('return {"step": run.step, "epoch": run.epoch, "batch_index": run.batch_index,\n'
                    '            "model": run.model.state_dict(),',
                    'return {"step": run.step, "epoch": run.epoch, "batch_index": run.batch_index,\n'
                    '            "model": run.model,')]),
    Right("checkpoint", "flat keys, random states restored first", source='''import random


def make_checkpoint(run):
    return {"step": run.step, "epoch": run.epoch, "batch_index": run.batch_index,
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "python_rng": random.getstate(),
            "numpy_rng": run.np_rng.bit_generator.state, "torch_rng": torch.get_rng_state()}


def restore_checkpoint(run, checkpoint):
    random.setstate(checkpoint["python_rng"])
    run.np_rng.bit_generator.state = checkpoint["numpy_rng"]
    torch.set_rng_state(checkpoint["torch_rng"])
    for name in ("model", "optimizer", "scheduler"):
        getattr(run, name).load_state_dict(checkpoint[name])
    run.step, run.epoch, run.batch_index = checkpoint["step"], checkpoint["epoch"], checkpoint["batch_index"]
'''),

    # ------------------------------------------------------------------ atomic, verified files
    Wrong("atomic", "writes straight to the final name (no temporary file)", visible=True,
          replace=[('    tmp = path.with_name(path.name + ".tmp")\n', "    tmp = path\n")]),
    Wrong("atomic", "no fsync of the file before the rename", visible=True,
          replace=[("        os.fsync(f.fileno())\n", "")]),
    Wrong("atomic", "keeps one checkpoint too many (off by one)", visible=True,
          replace=[("    for old in ref.checkpoints(folder)[:-keep]:\n",
                    "    for old in ref.checkpoints(folder)[:-keep - 1]:\n")]),
    Wrong("atomic", "load_latest returns the oldest checkpoint", visible=True,
          replace=[("    for path in reversed(ref.checkpoints(folder)):\n",
                    "    for path in ref.checkpoints(folder):\n")]),
    Wrong("atomic", "trusts torch.load's errors instead of the checksum (a flipped bit loads silently)",
          replace=[('''        header, newline, payload = path.read_bytes().partition(b"\\n")
        if not newline or header != b"sha256:" + hashlib.sha256(payload).hexdigest().encode():
            log(f"skipping a damaged checkpoint: {path.name} (checksum mismatch or no checksum)")
            continue
        return int(path.stem.split("-")[1]), torch.load(io.BytesIO(payload), weights_only=True)
''', '''        payload = path.read_bytes().partition(b"\\n")[2]
        try:
            state = torch.load(io.BytesIO(payload), weights_only=True)
        except Exception:
            log(f"skipping a damaged checkpoint: {path.name}")
            continue
        return int(path.stem.split("-")[1]), state
''')]),
    Right("atomic", "tempfile.NamedTemporaryFile in the folder, then os.replace", source='''import hashlib
import io
import tempfile
from pathlib import Path


def save_checkpoint(state, folder, step, keep=3):
    if keep < 1:
        raise ValueError("keep must be >= 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".partial", delete=False) as f:
        f.write(b"sha256:" + hashlib.sha256(payload).hexdigest().encode() + b"\\n" + payload)
        f.flush()
        os.fsync(f.fileno())
    path = ref.checkpoint_path(folder, step)
    os.replace(f.name, path)
    for old in ref.checkpoints(folder)[:-keep]:
        old.unlink()
    return path


def load_latest(folder, log=print):
    for path in sorted(ref.checkpoints(folder), reverse=True):
        data = path.read_bytes()
        newline = data.find(b"\\n")
        header, payload = data[:newline], data[newline + 1:]
        if newline < 0 or header[7:].decode(errors="replace") != hashlib.sha256(payload).hexdigest():
            log(f"{path.name}: checksum does not match, trying an older checkpoint")
            continue
        return int(path.name[5:13]), torch.load(io.BytesIO(payload), weights_only=True)
    return None
'''),

    # ------------------------------------------------------------------ supervise
    Wrong("supervise", "ignores its timeout (waits for ever)", visible=True,
          replace=[("            codes.append(proc.wait(timeout=timeout))\n",
                    "            codes.append(proc.wait())\n")]),
    Wrong("supervise", "re-raises a timeout without killing the hung process", visible=True,
          replace=[("            proc.kill()\n            proc.wait()\n            raise\n",
                    "            raise\n")]),
    Wrong("supervise", "restarts a hung process instead of raising", visible=True,
          replace=[("            proc.kill()\n            proc.wait()\n            raise\n",
                    "            proc.kill()\n            codes.append(proc.wait())\n"
                    "            continue\n")]),
    Wrong("supervise", "one restart too few (range(max_restarts))", visible=True,
          replace=[("    for attempt in range(max_restarts + 1):\n",
                    "    for attempt in range(max_restarts):\n")]),
    Wrong("supervise", "counts any non-negative exit code as success (only signals are failures)",
          visible=True,
          replace=[("        if codes[-1] == 0:\n", "        if codes[-1] >= 0:\n")]),
    Right("supervise", "a while loop and an explicit restart count",
          source='''def supervise(start, max_restarts=3, timeout=120):
    codes, attempt = [], 0
    while True:
        proc = start(attempt)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        codes.append(code)
        if code == 0:
            return codes
        if attempt == max_restarts:
            raise RuntimeError(f"still failing after {attempt} restarts: exit codes {codes}")
        attempt += 1
'''),

    # ------------------------------------------------------------------ elastic restart
    Wrong("elastic", "crashes on every attempt (no check of TORCHELASTIC_RESTART_COUNT)", visible=True,
          replace=[("        if attempt == 0 and rank == 1 and run.step == crash_at:\n",
                    "        if rank == 1 and run.step == crash_at:\n")]),
    Wrong("elastic", "does not resume: the restarted group starts from step 0", visible=True,
          replace=[("    if restored is not None:\n        ref.restore_checkpoint(run, restored[1])\n", "")]),
    Wrong("elastic", "checkpoints every 10 steps whatever `every` says",
          replace=[("        if run.step % every == 0:\n", "        if run.step % 10 == 0:\n")]),
    Right("elastic", "a for loop over the remaining steps",
          source='''def elastic_worker(folder, steps, every, crash_at=None):
    rank = dist.get_rank()
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    run = TrainingRun(0, augment=False, distributed=True)
    latest = ref.load_latest(folder, log=lambda message: None)
    if latest:
        ref.restore_checkpoint(run, latest[1])
    start = run.step
    for step in range(start, steps):
        if first_attempt and rank == 1 and step == crash_at:
            os._exit(13)
        run.train_step()
        if (step + 1) % every == 0:
            if rank == 0:
                ref.save_checkpoint(ref.make_checkpoint(run), folder, step + 1)
            dist.barrier()
    return {"attempt": int(not first_attempt), "resumed_from": start, "model": run.model.state_dict()}
'''),

    # ------------------------------------------------------------------ NaN guard and spike detector
    Wrong("silent", "steps the learning-rate schedule on a skipped step", visible=True,
          replace=[("    if not torch.isfinite(loss):\n        return False\n",
                    "    if not torch.isfinite(loss):\n        run.scheduler.step()\n"
                    "        return False\n")]),
    Wrong("silent", "is_spike takes the median of the whole history, not the last window", visible=True,
          replace=[("    recent = [h for h in history[-window:] if math.isfinite(h)]\n",
                    "    recent = [h for h in history if math.isfinite(h)]\n")]),
    Wrong("silent", "is_spike needs a full window of history, not window // 2", visible=True,
          replace=[("    return len(recent) >= window // 2 and", "    return len(recent) >= window and")]),
    Wrong("silent", "is_spike compares with the mean (three earlier spikes hide the next)",
          replace=[("    return len(recent) >= window // 2 and loss > factor * float(np.median(recent))\n",
                    "    return len(recent) >= window // 2 and loss > factor * float(np.mean(recent))\n")]),
    Wrong("silent", "checks the loss but not the gradient norm",
          replace=[("    if not torch.isfinite(norm):\n        run.optimizer.zero_grad()\n"
                    "        return False\n",
                    "")]),
    Wrong("silent", "measures the gradient norm without clipping it",
          replace=[("    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)\n",
                    "    norm = torch.linalg.vector_norm(\n"
                    "        torch.stack([p.grad.norm() for p in run.model.parameters()]))\n")]),
    Right("silent", "statistics.median and a float check of the loss", source='''import statistics


def guarded_update(run, loss, max_norm=10.0):
    run.optimizer.zero_grad()
    if not math.isfinite(loss.item()):
        return False
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
    if not math.isfinite(norm.item()):
        run.optimizer.zero_grad()
        return False
    run.optimizer.step()
    run.scheduler.step()
    return True


def is_spike(history, loss, window=20, factor=3.0):
    if math.isnan(loss) or math.isinf(loss):
        return True
    recent = [h for h in history[-window:] if math.isfinite(h)]
    if len(recent) < window // 2:
        return False
    return loss > factor * statistics.median(recent)
'''),

    # ------------------------------------------------------------------ checksum
    Wrong("checksum", "hashes values rounded to 6 decimals (a low bit flip goes unseen)", visible=True,
          replace=[(BYTES,
                    "        digest.update(str(tensor.detach().round(decimals=6).tolist()).encode())\n")]),
    Wrong("checksum", "hashes the parameters only: buffers such as batch norm's running mean go unseen",
          replace=[("    for name, tensor in model.state_dict().items():\n",
                    "    for name, tensor in model.named_parameters():\n")]),
    Wrong("checksum", "hashes the bytes without the names",
          replace=[("        digest.update(name.encode())\n", "")]),
    Wrong("checksum", "hashes names and shapes only", visible=True,
          replace=[(BYTES,
                    "        digest.update(str(tuple(tensor.shape)).encode())\n")]),
    Wrong("checksum", "returns after the first tensor",
          replace=[(BYTES,
                    BYTES + "        return digest.hexdigest()\n")]),
    Wrong("checksum", "hashes each tensor's sum (+0.0 and -0.0, and most low bits, vanish)",
          replace=[(BYTES,
                    "        digest.update(repr(tensor.detach().double().sum().item()).encode())\n")]),
    Right("checksum", "all bytes joined, one hash", source='''def weights_checksum(model):
    parts = []
    for name, tensor in model.state_dict().items():
        parts.append(name.encode())
        parts.append(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hashlib.sha256(b"".join(parts)).hexdigest()
'''),

    # ------------------------------------------------------------------ stragglers
    Wrong("stragglers", "the fastest rank instead of the slowest", visible=True,
          replace=[("    return np.asarray(compute).max(axis=1)\n",
                    "    return np.asarray(compute).min(axis=1)\n")]),
    Wrong("stragglers", "the maximum over steps, not over ranks (wrong axis)", visible=True,
          replace=[("    return np.asarray(compute).max(axis=1)\n",
                    "    return np.asarray(compute).max(axis=0)\n")]),
    Wrong("stragglers", "the (k+1)-th fastest rank (off by one)", visible=True,
          replace=[("    return np.sort(compute, axis=1)[:, k - 1]\n",
                    "    return np.sort(compute, axis=1)[:, k]\n")]),
    Wrong("stragglers", "waits for the first k ranks by index, not the k fastest", visible=True,
          replace=[("    return np.sort(compute, axis=1)[:, k - 1]\n",
                    "    return compute[:, :k].max(axis=1)\n")]),
    Wrong("stragglers", "no check of k (k larger than the ranks wraps or fails inside NumPy)",
          visible=True,
          replace=[("    if not 1 <= k <= compute.shape[1]:\n"
                    "        raise ValueError(f\"k must be between 1 and "
                    "{compute.shape[1]}, got {k}\")\n", "")]),
    Right("stragglers", "np.partition instead of a full sort", source='''def sync_step_times(compute):
    return np.max(np.asarray(compute, dtype=float), axis=-1)


def backup_step_times(compute, k):
    compute = np.asarray(compute, dtype=float)
    if k < 1 or k > compute.shape[1]:
        raise ValueError(f"k = {k}, but there are {compute.shape[1]} ranks")
    return np.partition(compute, k - 1, axis=1)[:, k - 1]
'''),
]
