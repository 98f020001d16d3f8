"""Random test instances around the paper's case study, for tests, acceptance checks and benchmarks.

:func:`random_problem` perturbs every knob of the case study (band, edge compute, deadlines, energy
budgets, model sizes and accuracies, accuracy target) so that instances cover slack and binding
deadlines, scarce bandwidth or compute, and infeasible corners.
"""

from __future__ import annotations

import numpy as np

from fedsplit.inference.paper_scenario import PaperScenarioConfig, pathloss_gain
from fedsplit.inference.system_model import ModelSpec, Problem, TerminalSpec


def random_models(rng: np.random.Generator, n_models: int) -> list[ModelSpec]:
    """``n_models`` models with growing input size, work and accuracy."""
    sides = np.sort(rng.uniform(80, 650, size=n_models))
    accuracies = np.sort(rng.uniform(0.45, 0.95, size=n_models))
    local_per_bit = rng.uniform(1.0, 10.0)
    edge_per_bit = rng.uniform(40.0, 160.0)
    models = []
    for k, (side, acc) in enumerate(zip(sides, accuracies)):
        bits = float(round(side) ** 2 * 24)
        models.append(
            ModelSpec(
                name=f"m{k}",
                input_bits=bits,
                local_cycles=bits * local_per_bit * rng.uniform(0.8, 1.2),
                edge_cycles=bits * edge_per_bit * rng.uniform(0.8, 1.2),
                accuracy=float(acc),
            )
        )
    return models


def random_problem(
    rng: np.random.Generator,
    n_terminals: int,
    n_models: int = 3,
    *,
    per_terminal_resources: bool = False,
) -> Problem:
    """A random instance around the case study.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_terminals, n_models : int
    per_terminal_resources : bool
        Scale the band and the edge server with ``n_terminals`` (as for a large cell with many
        carriers and servers) instead of drawing them around the paper's 20 MHz / 14 GHz.
    """
    config = PaperScenarioConfig()
    xy = rng.uniform(0.0, config.area_side_m, size=(n_terminals, 2))
    distance = np.hypot(xy[:, 0] - 500.0, xy[:, 1] - 500.0)
    gain = pathloss_gain(distance, config) * rng.exponential(1.0, size=n_terminals)
    if per_terminal_resources:
        bandwidth = n_terminals * rng.uniform(1.5e6, 4e6)
        compute = n_terminals * rng.uniform(1.5e9, 3e9)
    else:
        bandwidth = rng.uniform(8e6, 25e6)
        compute = rng.uniform(5e9, 20e9)
    terminals = [
        TerminalSpec(
            gain=float(gain[i]),
            cpu_hz=float(rng.uniform(1e9, 2e9)),
            tx_power_w=float(rng.uniform(0.2, 0.4)),
            energy_budget_j=float(rng.uniform(0.04, 0.08)),
            deadline_s=float(rng.uniform(0.2, 0.6)),
            kappa=1e-28,
        )
        for i in range(n_terminals)
    ]
    models = random_models(rng, n_models)
    accs = np.array([m.accuracy for m in models])
    target = float(rng.uniform(accs.min(), 0.5 * (accs.min() + accs.max())))
    return Problem.from_specs(
        bandwidth_hz=bandwidth,
        edge_cycles_per_s=compute,
        noise_w_per_hz=config.noise_w_per_hz,
        accuracy_target=target,
        terminals=terminals,
        models=models,
    )
