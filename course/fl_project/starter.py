"""The project's starter Flower app: a ClientApp (each car) and a ServerApp (the baseline strategy).

Taught in 05b_federated_privacy ("The project"); commands in course/fl_project/README.md. `flwr run` and the
deployment engine load `client_app` and `server_app` by name (course/fl_project/flower_app/pyproject.toml).
The cars run course.federated's ClientApp on the fixed split (the train config carries it); the ServerApp runs
`make_strategy()` with `run_on_grid`, the harness's own core, so it counts bytes and epsilon as the harness
does, and prints the harness's score line. Replace `make_strategy` and the run config's settings with yours.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from course import federated as ref
from course import fl_project

client_app = ref.make_client_app()  # its partition: --node-config "partition-id=K num-partitions=10"
server_app = ServerApp()


def make_strategy(cars: int, noise_multiplier: float, clipping_norm: float):
    """The strategy the ServerApp runs: the project's baseline (FedAvg, uniform average, central DP)."""
    return fl_project.baseline_strategy(cars=cars, noise_multiplier=noise_multiplier,
                                        clipping_norm=clipping_norm)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    cars = int(config.get("min-cars", fl_project.N_CARS))  # SuperNodes that must connect (all 10 for a score)
    strategy = make_strategy(cars, float(config.get("noise-multiplier", 2.0)),
                             float(config.get("clipping-norm", 1.0)))
    client_config = {"lr": float(config.get("lr", 0.2)), "local-epochs": int(config.get("local-epochs", 2))}
    with fl_project.flower_silenced():
        curve, counted = fl_project.run_on_grid(grid, strategy, int(config.get("num-server-rounds", 10)),
                                                int(config.get("seed", 0)), client_config)
    epsilon = fl_project.run_epsilon(strategy, counted.cars_per_round)
    print("test accuracy per round:", [round(a, 4) for a in curve], flush=True)
    total = counted.bytes_down + counted.bytes_up
    print(f"bytes down {counted.bytes_down}, up {counted.bytes_up}, total {total} "
          f"(budget {fl_project.BUDGET_BYTES}); cars per round {counted.cars_per_round}; "
          f"epsilon {epsilon:.2f} at delta {fl_project.DELTA:g} (target {fl_project.TARGET_EPSILON:g})",
          flush=True)
