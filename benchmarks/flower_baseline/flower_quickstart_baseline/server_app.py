"""flower_quickstart_baseline: a Flower ServerApp (quickstart-pytorch's server_app.py).

Besides what the quickstart does, ``global_evaluate`` appends one JSON line per central
evaluation (round 0 is before training) with a wall-clock timestamp to the run config's
``rounds-file``, so a benchmark can time each round.
"""

from __future__ import annotations

import json
import math
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flower_quickstart_baseline.task import Net, load_centralized_dataset, test

# Create ServerApp
app = ServerApp()


def _min_nodes(fraction: float, num_clients: int) -> int:
    """``max(1, ceil(fraction * num_clients))`` (0 if disabled), as fedmosaic samples."""
    return 0 if fraction == 0.0 else max(1, math.ceil(fraction * num_clients - 1e-9))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    # Read run config
    run_config = context.run_config
    fraction_train = float(run_config["fraction-train"])
    fraction_evaluate = float(run_config["fraction-evaluate"])
    num_clients = int(run_config["num-clients"])
    num_rounds = int(run_config["num-server-rounds"])
    lr = float(run_config["lr"])
    rounds_file = str(run_config["rounds-file"])

    # Load global model
    global_model = Net(run_config)
    arrays = ArrayRecord(global_model.state_dict())
    testloader = load_centralized_dataset(run_config)

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the global model on the central test set and timestamp the round."""
        global_model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(global_model, testloader)
        if rounds_file:
            line = {"round": server_round, "time": time.time(), "accuracy": accuracy,
                    "loss": loss}
            with open(rounds_file, "a") as handle:
                handle.write(json.dumps(line) + "\n")
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    # Initialize FedAvg strategy (same sampling as fedmosaic's strategies/registry.py)
    strategy = FedAvg(
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=_min_nodes(fraction_train, num_clients),
        min_evaluate_nodes=_min_nodes(fraction_evaluate, num_clients),
        min_available_nodes=num_clients,
    )

    # Start strategy, run FedAvg for `num_rounds`
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=global_evaluate,
    )
