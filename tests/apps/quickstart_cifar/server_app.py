"""quickstart_cifar: the ServerApp (FedAvg)."""

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from quickstart_cifar.task import Net

# Flower ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    fraction_train = float(context.run_config.get("fraction-train", 1.0))
    num_rounds = int(context.run_config["num-server-rounds"])
    lr = float(context.run_config.get("lr", 0.01))

    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    strategy = FedAvg(fraction_train=fraction_train)
    result = strategy.start(grid=grid, initial_arrays=arrays, train_config=ConfigRecord({"lr": lr}), num_rounds=num_rounds)
    print(f"final model: {len(result.arrays)} arrays")
