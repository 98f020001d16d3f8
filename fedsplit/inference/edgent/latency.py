"""Per-layer latency prediction (Neurosurgeon/Edgent style): profile, fit one regression per layer kind.

Layers are sorted into kinds (:func:`layer_kind`): ``conv``, ``linear``, ``pool``, ``activation``,
``norm``, and ``other`` (flatten, identity: reshapes). Each kind has its own shape features
(:func:`layer_features`, sizes in thousands of elements, FLOPs in millions) and its own linear
regression of the latency [s] on them, fitted by non-negative least squares on *relative* errors
(rows divided by the measured latency), so that small and large layers weigh alike and the median
absolute percentage error (MdAPE) is what is kept small. A prediction is never negative.

The timings are taken on *this* machine (the host), one layer at a time at batch size 1, by
:func:`profile_layer_sets` / :func:`profile_layers`: every layer call gets a timed loop of about a
millisecond in each of several trial rounds, the rounds visiting all calls in turn (interleaved, so a
change of load on a shared machine falls on all calls alike), and its latency is the fastest of its
trials (see :func:`time_calls`). A device profile
(:class:`fedsplit.devices.profile.DeviceProfile`) is reached by scaling: a layer that takes ``t``
seconds on the host takes ``t * host_flops_per_s / profile.flops_per_s`` on the profiled device,
where ``host_flops_per_s`` is the host's sustained throughput measured on the profiled conv and
linear layers (:attr:`LatencyModel.host_flops_per_s`). The edge server's latency comes the same way
through its profile (``edge-server``).
"""

from __future__ import annotations

import functools
import gc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedsplit.devices.profile import DeviceProfile

#: Layer kinds with a regression of their own (``other`` layers are predicted by a constant).
LAYER_KINDS: tuple[str, ...] = ("conv", "linear", "pool", "activation", "norm", "other")

#: Names of each kind's features (see :func:`layer_features`).
FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    "conv": ("1", "mflops", "k_in_elems", "k_out_elems", "k_weights", "mflops_pointwise", "mflops_strided"),
    "linear": ("1", "mflops", "k_in_elems", "k_out_elems"),
    "pool": ("1", "k_in_elems_max", "k_out_elems_max", "k_in_elems_avg", "k_out_elems_avg"),
    "activation": ("1", "k_in_elems"),
    "norm": ("1", "k_in_elems"),
    "other": ("1",),
}

_KIND_OF: tuple[tuple[type, str], ...] = (
    (nn.modules.conv._ConvNd, "conv"),
    (nn.Linear, "linear"),
    (nn.modules.pooling._MaxPoolNd, "pool"),
    (nn.modules.pooling._AvgPoolNd, "pool"),
    (nn.modules.pooling._AdaptiveAvgPoolNd, "pool"),
    (nn.modules.pooling._AdaptiveMaxPoolNd, "pool"),
    (nn.ReLU, "activation"),
    (nn.ReLU6, "activation"),
    (nn.Hardswish, "activation"),
    (nn.Sigmoid, "activation"),
    (nn.GELU, "activation"),
    (nn.modules.batchnorm._BatchNorm, "norm"),
    (nn.LayerNorm, "norm"),
    (nn.GroupNorm, "norm"),
    (nn.Flatten, "other"),
    (nn.Identity, "other"),
    (nn.Dropout, "other"),
)


def layer_kind(module: nn.Module) -> str:
    """The kind of a leaf layer, one of :data:`LAYER_KINDS`.

    Raises
    ------
    ValueError
        For a layer type with no latency regression (the message names it).
    """
    for cls, kind in _KIND_OF:
        if isinstance(module, cls):
            return kind
    raise ValueError(
        f"layer {type(module).__name__}: no latency regression for this layer type "
        f"(supported: conv, linear, pooling, activation, normalisation, flatten/identity/dropout)"
    )


def leaf_layers(module: nn.Module) -> list[nn.Module]:
    """The leaf modules of ``module`` in registration order (``module`` itself if it is a leaf)."""
    leaves = [m for m in module.modules() if not list(m.children())]
    return leaves or [module]


def layer_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward call of ``module`` on ``x`` (multiply and add counted separately)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())


def layer_features(kind: str, module: nn.Module, in_numel: int, out_numel: int, flops: int) -> np.ndarray:
    """Shape features of one layer call (see :data:`FEATURE_NAMES`).

    Conv layers also carry their FLOPs again when pointwise (1x1) or strided (those run at other
    efficiencies); pooling carries its sizes under max or average pooling (different costs).

    Parameters
    ----------
    kind : str
        The layer's kind (:func:`layer_kind`).
    module : nn.Module
        The layer.
    in_numel, out_numel : int
        Elements of its input and output (batch included).
    flops : int
        FLOPs of the call.
    """
    k_in, k_out = in_numel / 1e3, out_numel / 1e3
    if kind == "conv":
        weights = sum(p.numel() for p in module.parameters()) / 1e3
        mflops = flops / 1e6
        pointwise = all(k == 1 for k in module.kernel_size)
        strided = any(s > 1 for s in module.stride)
        values = [1.0, mflops, k_in, k_out, weights, mflops * pointwise, mflops * strided]
    elif kind == "linear":
        values = [1.0, flops / 1e6, k_in, k_out]
    elif kind == "pool":
        is_max = isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd))
        values = [1.0, k_in * is_max, k_out * is_max, k_in * (not is_max), k_out * (not is_max)]
    elif kind in ("activation", "norm"):
        values = [1.0, k_in]
    elif kind == "other":
        values = [1.0]
    else:
        raise ValueError(f"kind = {kind!r}: expected one of {', '.join(LAYER_KINDS)}")
    return np.asarray(values, dtype=float)


@dataclass(frozen=True)
class LayerTiming:
    """One profiled layer call.

    Attributes
    ----------
    kind : str
        Layer kind (:data:`LAYER_KINDS`).
    features : tuple of float
        Its shape features (:func:`layer_features`).
    flops : int
        FLOPs of the call.
    seconds : float
        Measured latency on the host [s].
    label : str
        A description of the layer and input shape (for reports).
    """

    kind: str
    features: tuple[float, ...]
    flops: int
    seconds: float
    label: str = ""


def _timed_loop(call: Callable[[], object], reps: int, timer: Callable[[], float]) -> float:
    """Seconds of ``reps`` back-to-back calls of ``call``, by ``timer``."""
    start = timer()
    for _ in range(reps):
        call()
    return timer() - start


def calibrate_reps(
    call: Callable[[], object], min_trial_s: float, *, timer: Callable[[], float] = time.perf_counter,
    max_reps: int = 1_000_000,
) -> int:
    """Calls per timed trial so that a trial lasts about ``min_trial_s`` (at least one call).

    The loop length doubles until it lasts ``min_trial_s / 4``; that loop is then timed twice more
    and the fastest of the three gives the cost of one call. A loop slowed by other work on the
    machine (a preemption) only makes a call look dearer, hence the fastest: a single slow loop
    would otherwise leave a layer of microseconds with one call per trial, where the timer's own
    overhead weighs.
    """
    reps = 1
    elapsed = _timed_loop(call, reps, timer)
    while elapsed < min_trial_s / 4 and reps < max_reps:
        reps = min(2 * reps, max_reps)
        elapsed = _timed_loop(call, reps, timer)
    fastest = min(elapsed, _timed_loop(call, reps, timer), _timed_loop(call, reps, timer))
    per_call = max(fastest / reps, 1e-12)
    return int(min(max_reps, max(1, math.ceil(min_trial_s / per_call - 1e-9))))


def time_calls(
    calls: Sequence[Callable[[], object]], *, trials: int = 15, min_trial_s: float = 1e-3, warmup: int = 3,
    statistic: str = "min", seed: int = 0, timer: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Latency [s] of each zero-argument ``call``, measured interleaved: every trial round visits every call.

    Each call is warmed up (``warmup`` untimed calls) and gets its loop length from
    :func:`calibrate_reps`. Then ``trials`` rounds follow; a round times every call once, in a
    seeded random order, as one untimed call (to bring its weights back into the caches after the
    other calls) and a loop of its ``reps`` calls (seconds / reps is one trial). A call's latency is
    the ``statistic`` (``"min"``, the default, or ``"median"``) of its trials.

    Interleaving is what makes the latencies comparable on a shared machine: the trials of every
    call are spread over the whole measurement, so a load that comes or goes part way through
    (another process starting, a CPU hog) weighs alike on all of them, instead of on whichever
    calls happened to be timed in that stretch. Timing one call's trials back to back, or one set of
    calls after another (training shapes, then held-out shapes), ties a call's latency to the load
    of its own stretch of time: on this project's shared 2-core machine a burst of other work lasting
    a few hundred milliseconds slowed a whole run of consecutive calls (all held-out norm layers, say)
    by 1.3-1.7x, and the held-out MdAPE of a fit on the other calls went from about 6 % to 20-29 %.

    The minimum, not the median: other work only ever adds time, and across interleaved rounds
    each call's fastest trial is the steadiest estimate of its own cost (measured here: a call's
    minimum varied by 0.6 % between whole profiles, its median by 5 %, with a trial's spread about
    its mean 10-30 % under load). Python's garbage collector is off while timing.

    Parameters
    ----------
    calls : sequence of callables
        What to time; each is called with no argument.
    trials : int
        Trial rounds (>= 1).
    min_trial_s : float
        Target length of one trial [s] (> 0).
    warmup : int
        Untimed calls of each call before calibrating (>= 0).
    statistic : str
        ``"min"`` or ``"median"`` of a call's trials.
    seed : int
        Seed of the per-round order.
    timer : callable
        Clock [s] (``time.perf_counter``; a fake one in tests).
    """
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic = {statistic!r}: expected 'median' or 'min'")
    reduce = np.median if statistic == "median" else np.min
    samples = trial_samples(calls, trials=trials, min_trial_s=min_trial_s, warmup=warmup, seed=seed, timer=timer)
    return [float(reduce(s)) for s in samples]


def trial_samples(
    calls: Sequence[Callable[[], object]], *, trials: int = 15, min_trial_s: float = 1e-3, warmup: int = 3,
    seed: int = 0, timer: Callable[[], float] = time.perf_counter,
) -> list[np.ndarray]:
    """The trials [s per call] behind :func:`time_calls`: one array of ``trials`` values per call."""
    if trials < 1:
        raise ValueError(f"trials = {trials}: expected >= 1")
    if not min_trial_s > 0:
        raise ValueError(f"min_trial_s = {min_trial_s!r}: expected a number > 0 (seconds)")
    rng = np.random.default_rng(seed)
    collecting = gc.isenabled()
    gc.disable()
    try:
        reps = []
        for call in calls:
            for _ in range(warmup):
                call()
            reps.append(calibrate_reps(call, min_trial_s, timer=timer))
        samples: list[list[float]] = [[] for _ in calls]
        for _ in range(trials):
            for i in rng.permutation(len(calls)):
                calls[i]()
                samples[i].append(_timed_loop(calls[i], reps[i], timer) / reps[i])
    finally:
        if collecting:
            gc.enable()
    return [np.asarray(s, dtype=float) for s in samples]


def time_call(module: nn.Module, x: torch.Tensor, *, trials: int = 15, min_trial_s: float = 1e-3,
              statistic: str = "min") -> float:
    """Latency [s] of ``module(x)`` alone (no gradient): :func:`time_calls` with this one call."""
    with torch.no_grad():
        return time_calls([lambda: module(x)], trials=trials, min_trial_s=min_trial_s, statistic=statistic)[0]


def describe_call(module: nn.Module, x: torch.Tensor) -> tuple[str, np.ndarray, int, tuple[int, ...]]:
    """``(kind, features, flops, output_shape)`` of ``module(x)`` (the module is put in eval mode)."""
    module.eval()
    kind = layer_kind(module)
    with torch.no_grad():
        out = module(x)
    flops = layer_flops(module, x)
    return kind, layer_features(kind, module, x.numel(), out.numel(), flops), flops, tuple(out.shape)


def profile_layer_sets(
    *call_sets: Iterable[tuple[nn.Module, tuple[int, ...]]], trials: int = 15, min_trial_s: float = 1e-3,
    statistic: str = "min", threads: int | None = 1,
) -> tuple[list[LayerTiming], ...]:
    """Time every ``(layer, input_shape)`` call of every set on the host together, interleaved.

    One list of :class:`LayerTiming` per set, in the sets' order. All calls of all sets share the
    trial rounds of :func:`time_calls`, so a training set and a held-out set profiled here are timed
    under the same load, whatever the machine does meanwhile (see :func:`time_calls`). Inputs are
    random (seeded), batch dimension included.

    Parameters
    ----------
    *call_sets : iterables of (nn.Module, tuple of int)
        Leaf layers and the full input shape each is called with.
    trials : int
        Timing rounds (each call's latency is the ``statistic`` of its trials).
    min_trial_s : float
        Target length of one trial [s].
    statistic : str
        ``"min"`` (default) or ``"median"`` of the trials.
    threads : int, optional
        ``torch.set_num_threads`` while timing (restored after); ``None`` leaves it as is. One thread
        gives the steadiest timings on a shared machine.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        described, thunks, sizes = [], [], []
        for calls in call_sets:
            calls = list(calls)
            sizes.append(len(calls))
            for module, shape in calls:
                x = torch.randn(shape, generator=generator)
                kind, features, flops, _ = describe_call(module, x)
                described.append((kind, tuple(features.tolist()), flops, f"{type(module).__name__}{tuple(shape)}"))
                thunks.append(functools.partial(module, x))
        with torch.no_grad():
            seconds = time_calls(thunks, trials=trials, min_trial_s=min_trial_s, statistic=statistic)
        timings = [LayerTiming(kind, features, flops, s, label)
                   for (kind, features, flops, label), s in zip(described, seconds)]
        bounds = np.cumsum([0, *sizes])
        return tuple(timings[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    finally:
        torch.set_num_threads(previous)


def profile_layers(
    calls: Iterable[tuple[nn.Module, tuple[int, ...]]], *, trials: int = 15, min_trial_s: float = 1e-3,
    statistic: str = "min", threads: int | None = 1,
) -> list[LayerTiming]:
    """Time each ``(layer, input_shape)`` call on the host: :func:`profile_layer_sets` with one set.

    To compare a model fitted on one set of calls with another set (held-out shapes), profile both
    in one :func:`profile_layer_sets` call, not with two calls of this function one after the other.
    """
    return profile_layer_sets(calls, trials=trials, min_trial_s=min_trial_s, statistic=statistic, threads=threads)[0]


def random_layer_calls(count_per_kind: int, seed: int) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Seeded random layers of every kind with CNN-like shapes, for profiling (batch size 1).

    Conv layers are 1x1, 3x3 or 5x5 with stride 1 or 2 on 4..64 pixel maps and 1..256 channels
    (capped at about 40 MFLOPs so a profile takes seconds); linear layers map 16..4096 to 10..1024
    features; pooling is 2x2 max or adaptive average; activations are ReLU; norms are BatchNorm2d.
    """
    rng = np.random.default_rng(seed)
    calls: list[tuple[nn.Module, tuple[int, ...]]] = []
    channel_choices = [1, 3, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    size_choices = [4, 8, 12, 16, 24, 32, 48, 64]
    while sum(1 for m, _ in calls if isinstance(m, nn.Conv2d)) < count_per_kind:
        cin, cout = (int(c) for c in rng.choice(channel_choices, 2))
        k = int(rng.choice([1, 3, 3, 5]))
        stride = int(rng.choice([1, 1, 2]))
        size = int(rng.choice(size_choices))
        out = (size + 2 * (k // 2) - k) // stride + 1
        if 2 * cin * cout * k * k * out * out > 40e6:
            continue
        calls.append((nn.Conv2d(cin, max(cout, 4), k, stride=stride, padding=k // 2, bias=bool(rng.integers(2))),
                      (1, cin, size, size)))
    for _ in range(count_per_kind):
        n_in = int(rng.integers(16, 4097))
        n_out = int(rng.integers(10, 1025))
        calls.append((nn.Linear(n_in, n_out), (1, n_in)))
    for _ in range(count_per_kind):
        c, size = int(rng.choice(channel_choices)), int(rng.choice(size_choices))
        pool = nn.MaxPool2d(2) if rng.integers(2) else nn.AdaptiveAvgPool2d(int(rng.choice([1, 2])))
        calls.append((pool, (1, c, size, size)))
    for _ in range(count_per_kind):
        c, size = int(rng.choice(channel_choices)), int(rng.choice(size_choices))
        calls.append((nn.ReLU(), (1, c, size, size)))
    for _ in range(count_per_kind):
        c, size = int(rng.choice(channel_choices)), int(rng.choice(size_choices))
        bn = nn.BatchNorm2d(c)
        bn.eval()
        calls.append((bn, (1, c, size, size)))
    for _ in range(max(3, count_per_kind // 4)):
        c, size = int(rng.choice(channel_choices)), int(rng.choice(size_choices))
        calls.append((nn.Flatten(), (1, c, size, size)))
    return calls


def mdape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Median absolute percentage error, in percent: ``median(|p - m| / m) * 100``."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if p.shape != m.shape or not len(m):
        raise ValueError(f"mdape: expected two equal-length non-empty sequences, got {p.shape} and {m.shape}")
    if np.any(m <= 0):
        raise ValueError("mdape: measured latencies must be > 0")
    return float(np.median(np.abs(p - m) / m) * 100.0)


@dataclass
class LatencyModel:
    """Per-kind latency regressions fitted on host timings, and the host's throughput.

    Attributes
    ----------
    coefficients : dict of str to numpy.ndarray
        Non-negative coefficients per kind, over :data:`FEATURE_NAMES` [s per unit of feature].
    host_flops_per_s : float
        Sustained throughput of the host on the profiled conv and linear layers [FLOP/s]; the
        scale from host seconds to a device profile's seconds.
    """

    coefficients: dict[str, np.ndarray]
    host_flops_per_s: float
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, timings: Sequence[LayerTiming], host_flops_per_s: float | None = None) -> "LatencyModel":
        """Fit one regression per kind present in ``timings``.

        Parameters
        ----------
        timings : sequence of LayerTiming
            Profiled calls; every kind to be predicted later needs at least one.
        host_flops_per_s : float, optional
            The host's throughput [FLOP/s]; by default total FLOPs / total seconds of the conv and
            linear timings.
        """
        if not timings:
            raise ValueError("timings = []: nothing to fit")
        coefficients: dict[str, np.ndarray] = {}
        for kind in LAYER_KINDS:
            rows = [t for t in timings if t.kind == kind]
            if not rows:
                continue
            features = np.array([t.features for t in rows], dtype=float)
            seconds = np.array([t.seconds for t in rows], dtype=float)
            if np.any(seconds <= 0):
                raise ValueError(f"timings of kind {kind!r}: latencies must be > 0 seconds")
            # Relative least squares: minimise sum(((f @ c) - t) / t)^2 with c >= 0.
            scale = features.max(axis=0)
            scale[scale == 0] = 1.0
            a = features / scale / seconds[:, None]
            solution, _ = nnls(a, np.ones(len(rows)))
            coefficients[kind] = solution / scale
        if host_flops_per_s is None:
            compute = [t for t in timings if t.kind in ("conv", "linear")]
            if not compute:
                raise ValueError("timings hold no conv or linear layer: pass host_flops_per_s")
            host_flops_per_s = sum(t.flops for t in compute) / sum(t.seconds for t in compute)
        if not host_flops_per_s > 0:
            raise ValueError(f"host_flops_per_s = {host_flops_per_s!r}: expected a number > 0 (FLOP/s)")
        return cls(coefficients, float(host_flops_per_s))

    def predict_host(self, kind: str, features: Sequence[float]) -> float:
        """Predicted latency on the host [s] of one call with these features (never negative)."""
        if kind not in self.coefficients:
            raise ValueError(
                f"kind = {kind!r}: no regression fitted for it (fitted: {', '.join(self.coefficients)})"
            )
        return max(0.0, float(np.dot(self.coefficients[kind], np.asarray(features, float))))

    def scale_to(self, profile: DeviceProfile) -> float:
        """Factor from host seconds to seconds on ``profile``: ``host_flops_per_s / profile.flops_per_s``."""
        return self.host_flops_per_s / profile.flops_per_s

    def predict(self, kind: str, features: Sequence[float], profile: DeviceProfile) -> float:
        """Predicted latency [s] of one call on the device described by ``profile``."""
        return self.predict_host(kind, features) * self.scale_to(profile)

    def to_dict(self) -> dict:
        """JSON-ready form (see :meth:`from_dict`)."""
        return {
            "host_flops_per_s": self.host_flops_per_s,
            "coefficients": {k: v.tolist() for k, v in self.coefficients.items()},
            "features": {k: list(FEATURE_NAMES[k]) for k in self.coefficients},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyModel":
        """Rebuild from :meth:`to_dict` output."""
        try:
            coefficients = {k: np.asarray(v, float) for k, v in data["coefficients"].items()}
            host = float(data["host_flops_per_s"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"latency model: expected 'coefficients' and 'host_flops_per_s' ({error})") from error
        for kind, values in coefficients.items():
            if kind not in FEATURE_NAMES or values.shape != (len(FEATURE_NAMES[kind]),):
                raise ValueError(f"latency model: coefficients[{kind!r}] has shape {values.shape}; expected "
                                 f"{len(FEATURE_NAMES.get(kind, ()))} values for a known kind")
        return cls(coefficients, host)

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "LatencyModel":
        """Read a JSON written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def profile_and_fit(count_per_kind: int = 24, seed: int = 0, trials: int = 15) -> tuple[LatencyModel, list[LayerTiming]]:
    """Profile :func:`random_layer_calls` on the host and fit a :class:`LatencyModel` (a few seconds)."""
    timings = profile_layers(random_layer_calls(count_per_kind, seed), trials=trials)
    return LatencyModel.fit(timings), timings


def held_out_mdape(model: LatencyModel, timings: Sequence[LayerTiming]) -> dict[str, float]:
    """MdAPE [%] of host predictions on ``timings`` (layers not used to fit), per kind and ``all``."""
    result: dict[str, float] = {}
    for kind in LAYER_KINDS:
        rows = [t for t in timings if t.kind == kind]
        if rows:
            result[kind] = mdape([model.predict_host(kind, t.features) for t in rows], [t.seconds for t in rows])
    result["all"] = mdape([model.predict_host(t.kind, t.features) for t in timings], [t.seconds for t in timings])
    return result


__all__ = [
    "FEATURE_NAMES",
    "LAYER_KINDS",
    "LatencyModel",
    "LayerTiming",
    "describe_call",
    "held_out_mdape",
    "layer_features",
    "layer_flops",
    "layer_kind",
    "leaf_layers",
    "mdape",
    "calibrate_reps",
    "profile_and_fit",
    "profile_layer_sets",
    "profile_layers",
    "random_layer_calls",
    "time_call",
    "time_calls",
    "trial_samples",
]
