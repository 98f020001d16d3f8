"""Random test instances around the paper's case study, for tests, acceptance checks and benchmarks.

:func:`random_problem` perturbs every knob of the case study (band, edge compute, deadlines, energy
budgets, model sizes and accuracies, accuracy target) so that instances cover slack and binding
deadlines, scarce bandwidth or compute, and infeasible corners.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedsplit.inference.feasibility import pair_table
from fedsplit.inference.paper_scenario import (
    PaperModels,
    PaperScenarioConfig,
    generate_paper_scenario,
    pathloss_gain,
)
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


def benchmark_problem(
    n_terminals: int,
    n_models: int = 5,
    seed: int = 0,
    *,
    terminals_per_cell: float = 6.0,
    accuracy_target: float = 0.7,
) -> Problem:
    """The case study scaled to many terminals, for the speed and gap benchmarks.

    The band and the edge server grow with the number of terminals (the paper's 20 MHz and 14 GHz
    per ``terminals_per_cell`` terminals), models are ``n_models`` input sizes from 100x100 to
    600x600 with accuracy rising from 0.60 to 0.88, and terminals that could use no model at all
    (deep fades) are not admitted: they are redrawn, as admission control would refuse them.
    """
    config = PaperScenarioConfig()
    sides = tuple(int(round(x)) for x in np.linspace(100, 600, n_models))
    accuracies = tuple(float(a) for a in np.linspace(0.60, 0.88, n_models))
    models = PaperModels(input_sides=sides, accuracies=accuracies).specs()
    scale = n_terminals / terminals_per_cell
    config = replace(
        config,
        bandwidth_hz=config.bandwidth_hz * scale,
        edge_cycles_per_s=config.edge_cycles_per_s * scale,
        accuracy_target=accuracy_target,
    )
    draw = generate_paper_scenario(int(n_terminals * 1.3) + 8, seed, config, models)
    usable = np.nonzero(np.any(pair_table(draw).feasible, axis=1))[0]
    if usable.size < n_terminals:  # pragma: no cover - needs an absurd configuration
        raise ValueError("too few admissible terminals; loosen the configuration")
    return draw.subset(usable[:n_terminals])
