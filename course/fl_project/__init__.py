"""The federated-learning project: a fixed fleet, a fixed harness, a budget, and a leaderboard.

Taught in 05b_federated_privacy ("The project"); the brief is course/fl_project/README.md. A submission is
a Flower strategy (built fresh by `make_strategy()`), a number of rounds and the cars' training settings.
`evaluate(submission, seeds)` runs it with Flower's own `Strategy.start` on a `LocalGrid` of the fixed fleet
(10 cars, Dirichlet(0.3) label skew, partition seed 2026; course.federated's MLP and ClientApp), counts the
bytes of every ArrayRecord the server sends and receives, computes the run's client-level epsilon, and
returns a `Score`. What may not change (the split, the model, the test set, the harness) is not part of a
submission; a submission that tries (a split key in its config, a strategy that would wait for cars that do
not exist) is refused with `ProjectRuleError`, and one over the budget with `OverBudget`.

The same core (`run_on_grid`) runs the starter ServerApp on Flower's engines (`course.fl_project.app`).
`python -m course.fl_project leaderboard GRADING_FOLDER` ranks the score lines that the graded test cell
printed in a course grading run (`score_line`, `leaderboard`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy

from course import federated as ref
from course.models import digit_mlp

# ----------------------------------------------------------------- what may not change
N_CARS = 10                 # the fleet: one SuperNode per car, partition-id 0..9 of 10
ALPHA = 0.3                 # Dirichlet label skew of the split
PARTITION_SEED = 2026       # fixes the split: every submission trains on the same cars' data
SPLIT = {"partitioning": "dirichlet", "alpha": ALPHA, "partition-seed": PARTITION_SEED}
# ----------------------------------------------------------------- the goal and its budget
BUDGET_BYTES = 6_000_000    # bytes of ArrayRecords sent down to the cars plus up to the server, whole run
TARGET_EPSILON = 8.0        # client-level (epsilon, delta)-DP of the whole run
DELTA = 1e-5
MAX_ROUNDS = 50
# ----------------------------------------------------------------- what a submission may set
CLIENT_KEYS = {"lr": (float, 1e-4, 1.0), "local-epochs": (int, 1, 5), "proximal-mu": (float, 0.0, 10.0)}
SPLIT_KEYS = {"partitioning", "alpha", "partition-seed", "num-partitions", "partition-id"}
# The graded test cell's floor: the accuracy the baseline clears on every seed (see the notebook's demo)
ACCURACY_FLOOR = 0.25
SCORE_PREFIX = "FL-PROJECT-SCORE "
GRADED_CELL = "project_tests"   # the locked test cell that prints the score line
MODULE = "05b_federated_privacy"


@contextlib.contextmanager
def flower_silenced():
    """Flower's log at ERROR and above only (it warns that federated evaluation is off: meant to be), and
    Python's warnings hidden, for the block."""
    with ref.quiet_flower(), ref.warnings_hidden():
        yield


class ProjectRuleError(ValueError):
    """The submission changes what the project fixes, or cannot run on the fleet."""


class OverBudget(ValueError):
    """The run would send more bytes than `BUDGET_BYTES`, or spend more than `TARGET_EPSILON`."""


@dataclass
class Submission:
    """A learner's entry: `make_strategy()` returns a NEW Flower strategy each call (strategies keep state
    such as FedAdam's moments); `rounds` server rounds; `client_config` the cars' training settings
    (keys of `CLIENT_KEYS`: "lr", "local-epochs", "proximal-mu")."""

    make_strategy: Callable[[], Strategy]
    rounds: int
    client_config: dict = field(default_factory=dict)
    name: str = "submission"


@dataclass
class Score:
    """What `evaluate` measured: final test accuracy per seed (mean, sample std), bytes per run (down to the
    cars, up to the server; identical for every seed), epsilon at `DELTA`, and whether both budgets hold."""

    name: str
    seeds: list[int]
    accuracies: list[float]
    accuracy_mean: float
    accuracy_std: float
    bytes_down: int
    bytes_up: int
    bytes_total: int
    epsilon: float
    rounds: int
    within_budget: bool
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        eps = "inf (no DP)" if math.isinf(self.epsilon) else f"{self.epsilon:.2f}"
        verdict = "within budget" if self.within_budget else "OVER BUDGET: " + "; ".join(self.problems)
        return (f"{self.name}: accuracy {self.accuracy_mean:.3f} ± {self.accuracy_std:.3f} over seeds "
                f"{self.seeds} (min {min(self.accuracies):.3f}, max {max(self.accuracies):.3f}); "
                f"{self.bytes_total / 1e6:.2f} MB of {BUDGET_BYTES / 1e6:.1f} MB; epsilon {eps} of "
                f"{TARGET_EPSILON:g} at delta {DELTA:g}; {self.rounds} rounds; {verdict}")


# ----------------------------------------------------------------- checking a submission

def _chain(strategy) -> list:
    """The strategy and the strategies it wraps (a DP wrapper's `.strategy`), outermost first."""
    chain = [strategy]
    while isinstance(getattr(chain[-1], "strategy", None), Strategy):
        chain.append(chain[-1].strategy)
    return chain


def check_submission(submission: Submission) -> Strategy:
    """Refuse (ProjectRuleError) what the project fixes or the fleet cannot run; return a fresh strategy."""
    if not isinstance(submission.rounds, int) or not 1 <= submission.rounds <= MAX_ROUNDS:
        raise ProjectRuleError(f"rounds must be an integer from 1 to {MAX_ROUNDS}, got {submission.rounds!r}")
    config = dict(submission.client_config or {})
    changed = sorted(SPLIT_KEYS & set(config))
    if changed:
        raise ProjectRuleError(f"the split is fixed (Dirichlet alpha={ALPHA}, partition seed "
                               f"{PARTITION_SEED}, {N_CARS} cars): remove {changed} from client_config")
    unknown = sorted(set(config) - set(CLIENT_KEYS))
    if unknown:
        raise ProjectRuleError(f"client_config may set only {sorted(CLIENT_KEYS)}; not {unknown}")
    for key, value in config.items():
        kind, low, high = CLIENT_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (kind is int and int(value) != value) or not low <= value <= high:
            raise ProjectRuleError(f"client_config[{key!r}] must be a {kind.__name__} in [{low}, {high}], "
                                   f"got {value!r}")
    with flower_silenced():
        strategy = submission.make_strategy()
    if not isinstance(strategy, Strategy):
        raise ProjectRuleError(f"make_strategy() must return a Flower strategy (flwr.serverapp.strategy), "
                               f"got {type(strategy).__name__}")
    chain = _chain(strategy)
    if any(type(s).start is not Strategy.start for s in chain):
        raise ProjectRuleError("the harness runs Flower's own Strategy.start: do not override start()")
    for outer in chain[:-1]:
        if type(outer) is not DifferentialPrivacyServerSideFixedClipping:
            raise ProjectRuleError(f"the harness accounts only DifferentialPrivacyServerSideFixedClipping as "
                                   f"the outermost wrapper, not {type(outer).__name__}")
    if len(chain) > 2:
        raise ProjectRuleError("wrap the strategy in one DifferentialPrivacyServerSideFixedClipping, "
                               "not several")
    inner = chain[-1]
    for name in ("min_available_nodes", "min_train_nodes"):
        if getattr(inner, name, 0) > N_CARS:
            raise ProjectRuleError(f"{name}={getattr(inner, name)}: the fleet has {N_CARS} cars, so the "
                                   "strategy would wait for cars that never connect")
    if getattr(inner, "fraction_evaluate", 0.0) != 0.0:
        raise ProjectRuleError("set fraction_evaluate=0.0: the harness evaluates the global model centrally "
                               "on the fixed test set, and the cars' ClientApp has no evaluate handler")
    if len(chain) == 2 and strategy.noise_multiplier > 0 and (
            not isinstance(inner, FedAvg) or type(inner).aggregate_train is not FedAvg.aggregate_train):
        raise ProjectRuleError(
            f"under central DP the wrapped strategy must aggregate as FedAvg does (FedAvg, FedProx), not "
            f"{type(inner).__name__}: the wrapper adds noise AFTER the inner aggregation, and a server "
            "optimiser (FedAvgM, FedAdam, ...) keeps un-noised averages in its state, which leak into later "
            "rounds, so sigma*C/m per round no longer bounds a car's influence (Flower's accounted mode has "
            "the same rule)")
    if len(chain) == 2 and strategy.noise_multiplier > 0 and \
            getattr(inner, "weighted_by_key", None) != "num-cars":
        raise ProjectRuleError("central DP's noise sigma*C/m assumes a uniform average of the m clipped "
                               "updates: give the wrapped strategy weighted_by_key='num-cars' (every car "
                               "replies 1)")
    return strategy


def dp_settings(strategy) -> tuple[float, int] | None:
    """(noise multiplier, declared sampled cars) of a central-DP strategy, None without one."""
    if isinstance(strategy, DifferentialPrivacyServerSideFixedClipping) and strategy.noise_multiplier > 0:
        return float(strategy.noise_multiplier), int(strategy.num_sampled_clients)
    return None


def run_epsilon(strategy, cars_per_round: list[int], delta: float = DELTA) -> float:
    """Client-level epsilon of a run of central DP (server-side fixed clipping, uniform average).

    Round r averages the clipped updates of m_r cars and adds noise of std sigma*C/m_declared (Flower's
    `compute_stdv`), so for any one car it is a Gaussian mechanism with multiplier
    sigma_r = sigma*m_r/m_declared (sensitivity C/m_r). No credit for sampling (as Flower's accounted mode:
    "no-amplification"): a car may be in every round. Rounds compose in Gaussian DP to
    mu = sqrt(sum 1/sigma_r^2) (Dong, Roth and Su 2022), converted exactly by
    `course.federated.gaussian_dp_epsilon`. Infinite without noise.
    """
    settings = dp_settings(strategy)
    if settings is None:
        return float("inf")
    sigma, declared = settings
    rounds = [m for m in cars_per_round if m > 0]
    if not rounds:
        return 0.0
    mu = math.sqrt(sum((declared / (sigma * m)) ** 2 for m in rounds))
    return ref.gaussian_dp_epsilon(math.sqrt(len(rounds)) / mu, len(rounds), delta)


def arrays_bytes(message) -> int:
    """Bytes of the ArrayRecords a Message carries (each Array's serialised data); 0 for an error reply."""
    if message.has_error():
        return 0
    records = message.content.array_records.values()
    return sum(len(array.data) for record in records for array in record.values())


class CountingGrid:
    """A Flower Grid that counts what the strategy sends and receives: bytes of ArrayRecords down (to the
    cars) and up (their replies), and the number of cars per training round. With `budget`, raises
    `OverBudget` before sending (or after receiving) what would take the total past it."""

    def __init__(self, grid, budget: int | None = None):
        self._grid, self.budget = grid, budget
        self.bytes_down = self.bytes_up = 0
        self.cars_per_round: list[int] = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def _check(self, total: int) -> None:
        if self.budget is not None and total > self.budget:
            raise OverBudget(f"over the communication budget: {total / 1e6:.2f} MB > "
                             f"{self.budget / 1e6:.1f} MB in round {max(1, len(self.cars_per_round))}; use fewer "
                             "rounds or a smaller fraction of cars per round")

    def send_and_receive(self, messages, *args, **kwargs):
        messages = list(messages)
        down = sum(arrays_bytes(m) for m in messages)
        if any(m.metadata.message_type == "train" for m in messages):
            self.cars_per_round.append(len(messages))
        for message in messages:  # a strategy's configure_train could rewrite the config the cars read
            config = message.content.config_records.get("config") if not message.has_error() else None
            if config is not None and any(config.get(k) != v for k, v in SPLIT.items()):
                raise ProjectRuleError(f"the split is fixed: a message to the cars carries "
                                       f"{ {k: config.get(k) for k in SPLIT} } instead of {SPLIT}")
        self._check(self.bytes_down + self.bytes_up + down)
        self.bytes_down += down
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        self.bytes_up += sum(arrays_bytes(r) for r in replies)
        self._check(self.bytes_down + self.bytes_up)
        return replies


def seed_everything(seed: int) -> None:
    """Flower samples cars with `random` and draws DP noise with numpy's global generator: seed both."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_on_grid(grid, strategy, rounds: int, seed: int, client_config: dict | None = None,
                budget: int | None = None) -> tuple[list[float], CountingGrid]:
    """Run `strategy.start` for `rounds` on `grid` (a LocalGrid, or the Grid of a ServerApp on Flower's
    engines) from `digit_mlp(HIDDEN, seed)`, with the fixed split and `client_config`; test accuracy after
    each round and the CountingGrid that counted the run."""
    counting = CountingGrid(grid, budget)
    curve: list[float] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round > 0:
            curve.append(ref.central_accuracy(arrays))
        return MetricRecord({"accuracy": curve[-1] if curve else 0.0})

    seed_everything(seed)
    config = ConfigRecord({"lr": 0.2, "local-epochs": 2, **(client_config or {}), **SPLIT})
    strategy.start(grid=counting, initial_arrays=ArrayRecord(digit_mlp(ref.HIDDEN, seed=seed).state_dict()),
                   num_rounds=rounds, train_config=config, evaluate_fn=evaluate_fn)
    return curve, counting


def evaluate(submission: Submission, seeds=(0, 1, 2), strict: bool = True) -> Score:
    """Score `submission` on the fixed fleet, one run per seed (the seed picks the initial model, the cars
    sampled each round and the DP noise; the split never changes). Deterministic.

    Raises ProjectRuleError for what may not change, and with `strict` OverBudget as soon as a run passes the
    communication budget, or when its epsilon exceeds `TARGET_EPSILON` (checked before running when there is
    no noise at all). With `strict=False` the run goes on and the Score says what is over (`problems`).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("evaluate needs at least one seed")
    accuracies, counted, epsilons = [], [], []
    for seed in seeds:
        strategy = check_submission(submission)
        if strict and dp_settings(strategy) is None:
            raise OverBudget(f"epsilon is infinite: without noise (DifferentialPrivacyServerSideFixedClipping"
                             f" with noise_multiplier > 0) a run spends no bounded privacy; the target is "
                             f"epsilon <= {TARGET_EPSILON:g} at delta {DELTA:g}")
        grid = ref.LocalGrid(ref.make_client_app(), N_CARS)
        with ref.server_identity(), flower_silenced(), ref.one_thread():
            curve, counting = run_on_grid(grid, strategy, submission.rounds, seed, submission.client_config,
                                          BUDGET_BYTES if strict else None)
        epsilon = run_epsilon(strategy, counting.cars_per_round)
        if strict and epsilon > TARGET_EPSILON:
            raise OverBudget(f"epsilon {epsilon:.2f} > {TARGET_EPSILON:g} at delta {DELTA:g}: more noise, "
                             "fewer rounds, or fewer cars per round with num_sampled_clients to match")
        accuracies.append(curve[-1] if curve else 0.0)
        counted.append(counting)
        epsilons.append(epsilon)
    down, up = max(c.bytes_down for c in counted), max(c.bytes_up for c in counted)
    epsilon = max(epsilons)
    problems = []
    if down + up > BUDGET_BYTES:
        problems.append(f"{(down + up) / 1e6:.2f} MB > {BUDGET_BYTES / 1e6:.1f} MB")
    if epsilon > TARGET_EPSILON:
        problems.append(f"epsilon {epsilon:.2f} > {TARGET_EPSILON:g}")
    return Score(name=submission.name, seeds=seeds, accuracies=[round(a, 6) for a in accuracies],
                 accuracy_mean=round(statistics.fmean(accuracies), 6),
                 accuracy_std=round(statistics.stdev(accuracies), 6) if len(accuracies) > 1 else 0.0,
                 bytes_down=down, bytes_up=up, bytes_total=down + up,
                 epsilon=round(epsilon, 4) if math.isfinite(epsilon) else epsilon,
                 rounds=submission.rounds, within_budget=not problems, problems=problems)


def merge_scores(scores: list[Score]) -> Score:
    """One Score over the seeds of several (of one submission): what a graded cell reports after its hidden
    seeds are added to the visible one, without running the visible seed again."""
    accuracies = [a for s in scores for a in s.accuracies]
    first = scores[0]
    down, up = max(s.bytes_down for s in scores), max(s.bytes_up for s in scores)
    epsilon = max(s.epsilon for s in scores)
    return Score(name=first.name, seeds=[x for s in scores for x in s.seeds], accuracies=accuracies,
                 accuracy_mean=round(statistics.fmean(accuracies), 6),
                 accuracy_std=round(statistics.stdev(accuracies), 6) if len(accuracies) > 1 else 0.0,
                 bytes_down=down, bytes_up=up, bytes_total=down + up, epsilon=epsilon, rounds=first.rounds,
                 within_budget=all(s.within_budget for s in scores),
                 problems=sorted({p for s in scores for p in s.problems}))


# ----------------------------------------------------------------- the baseline

def baseline_strategy(cars: int = N_CARS, noise_multiplier: float = 2.0, clipping_norm: float = 1.0,
                      fraction_train: float = 1.0):
    """FedAvg over a uniform average (every car weighs 1, "num-cars") with server-side fixed clipping and
    Gaussian noise: the starter strategy, within both budgets."""
    with flower_silenced():
        fedavg = FedAvg(fraction_train=fraction_train, fraction_evaluate=0.0, min_train_nodes=1,
                        min_available_nodes=cars, weighted_by_key="num-cars")
        sampled = max(int(cars * fraction_train), 1)
        return DifferentialPrivacyServerSideFixedClipping(fedavg, noise_multiplier=noise_multiplier,
                                                          clipping_norm=clipping_norm,
                                                          num_sampled_clients=sampled)


BASELINE_ROUNDS = 10
BASELINE_CONFIG = {"lr": 0.2, "local-epochs": 2}


def baseline() -> Submission:
    """The starter submission: FedAvg + central DP (sigma 2, C 1), 10 rounds, every car, 2 local epochs."""
    return Submission(baseline_strategy, BASELINE_ROUNDS, dict(BASELINE_CONFIG), name="baseline")


# ----------------------------------------------------------------- the leaderboard

def score_line(score: Score, who: str = "") -> str:
    """One machine-readable line (the graded test cell prints it; `leaderboard` reads it)."""
    data = asdict(score)
    data["epsilon"] = None if math.isinf(score.epsilon) else score.epsilon
    if who:
        data["name"] = who
    return SCORE_PREFIX + json.dumps(data, sort_keys=True)


def parse_score_line(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith(SCORE_PREFIX):
        return None
    try:
        data = json.loads(line[len(SCORE_PREFIX):])
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def graded_score(notebook: Path) -> dict | None:
    """The last score line printed by the locked project test cell of an autograded notebook."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    found = None
    for cell in nb.get("cells", []):
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") != GRADED_CELL:
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                text = output.get("text", "")
                for line in (text if isinstance(text, str) else "".join(text)).splitlines():
                    found = parse_score_line(line) or found
    return found


@dataclass
class Entry:
    student: str
    accuracy_mean: float
    accuracy_std: float
    seeds: list[int]
    bytes_total: int
    epsilon: float | None
    status: str


def leaderboard(grading: Path, module: str = MODULE) -> list[Entry]:
    """Rank the students of a course grading run (`python -m autograders.grade 05b_federated_privacy ...
    --out GRADING`): for each `autograded/<student>/<module>/<module>.ipynb`, the last score line of its
    locked project test cell. A student is ranked only when grades.csv says `graded` (not held for review)
    and the project test cell earned its points (within both budgets, above the floor). Best mean accuracy
    first; ties: fewer bytes, then smaller epsilon, then the student id.
    """
    grading = Path(grading)
    rows = {}
    grades = grading / "grades.csv"
    if grades.exists():
        with open(grades, newline="", encoding="utf-8") as handle:
            rows = {row["student"]: row for row in csv.DictReader(handle)}
    entries = []
    for notebook in sorted(grading.glob(f"autograded/*/{module}/{module}.ipynb")):
        student = notebook.parent.parent.name
        row = rows.get(student)
        earned = float(row.get(GRADED_CELL) or 0) if row else 0.0
        if row is None or row.get("status") != "graded" or earned <= 0:
            continue
        score = graded_score(notebook)
        if score is None or not score.get("within_budget"):
            continue
        entries.append(Entry(student, float(score["accuracy_mean"]), float(score["accuracy_std"]),
                             list(score["seeds"]), int(score["bytes_total"]), score["epsilon"],
                             row["status"]))
    return sorted(entries, key=lambda e: (-e.accuracy_mean, e.bytes_total, e.epsilon or 0.0, e.student))


def format_leaderboard(entries: list[Entry]) -> str:
    lines = [f"{'rank':>4}  {'student':<20} {'accuracy':>17} {'seeds':>7} {'MB':>6} {'epsilon':>8}"]
    for rank, e in enumerate(entries, start=1):
        lines.append(f"{rank:>4}  {e.student:<20} {e.accuracy_mean:>8.3f} ± {e.accuracy_std:<6.3f} "
                     f"{len(e.seeds):>7} {e.bytes_total / 1e6:>6.2f} {e.epsilon:>8.2f}")
    if not entries:
        lines.append("  (no graded submission within budget)")
    return "\n".join(lines)
