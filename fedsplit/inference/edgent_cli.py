"""``fedsplit edgent``: print Edgent's plan (exit, partition) for a latency requirement and a bandwidth.

Exit codes: 0 on success (an infeasible requirement is a successful answer: ``feasible=false`` with
the reason), 2 on bad input (one line on stderr naming the option and the bad value).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fedsplit.cli_errors import print_error
from pathlib import Path

EXIT_BAD_INPUT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``edgent`` sub-command to the ``fedsplit`` parser."""
    parser = subparsers.add_parser(
        "edgent",
        help="plan a multi-exit model's exit and device/edge partition for a deadline and bandwidth",
        description="Edgent (Li et al., 2019): choose the most accurate (exit, partition point) of a "
        "multi-exit model whose predicted latency (device part + transfer of the cut tensor + edge "
        "part) meets the requirement at the given uplink bandwidth.",
    )
    parser.add_argument("--model", default="multiexit-cnn", help="multi-exit model (default multiexit-cnn)")
    parser.add_argument("--width", type=float, default=None, help="channel multiplier (default 0.5, or the calibration's)")
    parser.add_argument("--latency-ms", type=float, required=True, help="latency requirement [ms]")
    parser.add_argument("--bandwidth-mbps", type=float, required=True, help="uplink bandwidth [Mbit/s]")
    parser.add_argument("--device", default=None, help="terminal device profile (default iot-camera)")
    parser.add_argument("--edge", default=None, help="edge server profile (default edge-server)")
    parser.add_argument("--link-latency-ms", type=float, default=None,
                        help="one-way link latency [ms] (default: the device profile's)")
    parser.add_argument("--calibration", metavar="FILE.json",
                        help="latency model and per-exit accuracies written by experiments/edgent.py "
                        "(default: profile this machine now, and rank exits by depth)")
    parser.add_argument("--mode", default="edgent", choices=("edgent", "device-only", "edge-only"))
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=run_edgent)


def _fail(message: str) -> int:
    print_error("edgent", message)
    return EXIT_BAD_INPUT


def run_edgent(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit edgent``."""
    from fedsplit.inference.edgent.configs import build_config_table
    from fedsplit.inference.edgent.devices import DEFAULT_DEVICE, DEFAULT_EDGE, get_profile
    from fedsplit.inference.edgent.latency import LatencyModel, profile_and_fit
    from fedsplit.inference.edgent.optimizer import plan
    from fedsplit.models.multiexit import build_multiexit

    if not args.latency_ms > 0:
        return _fail(f"--latency-ms: got {args.latency_ms!r}; expected a number > 0")
    if not args.bandwidth_mbps > 0:
        return _fail(f"--bandwidth-mbps: got {args.bandwidth_mbps!r}; expected a number > 0")
    if args.width is not None and not 0 < args.width < float("inf"):
        return _fail(f"--width: got {args.width!r}; expected a finite number > 0 (the channel multiplier)")
    calibration: dict = {}
    if args.calibration:
        try:
            calibration = json.loads(Path(args.calibration).read_text(encoding="utf-8"))
            if not isinstance(calibration, dict) or "latency_model" not in calibration:
                return _fail(f"--calibration {args.calibration}: no 'latency_model' entry; expected the "
                             "calibration.json that experiments/edgent.py writes")
            latency = LatencyModel.from_dict(calibration["latency_model"])
        except (OSError, ValueError, KeyError) as error:
            return _fail(f"--calibration {args.calibration}: {error}")
    else:
        latency, _ = profile_and_fit(count_per_kind=8, seed=0, trials=7)
    width = args.width if args.width is not None else float(calibration.get("width", 0.5))
    accuracies = calibration.get("accuracies")
    measured_on = (calibration.get("model", "multiexit-cnn"), float(calibration.get("width", 0.5)))
    if accuracies is not None and (args.model, width) != measured_on:
        # the latency model holds for any layer sizes; the exits' accuracies only for the model measured
        print(f"fedsplit edgent: the calibration's accuracies were measured on {measured_on[0]} at width "
              f"{measured_on[1]:g}, not {args.model} at width {width:g}: exits are ranked by depth instead",
              file=sys.stderr)
        accuracies = None
    try:
        device = get_profile(args.device or calibration.get("device", DEFAULT_DEVICE))
        edge = get_profile(args.edge or calibration.get("edge", DEFAULT_EDGE))
        model = build_multiexit(args.model, tuple(calibration.get("input_shape", (1, 32, 32))),
                                int(calibration.get("num_classes", 10)), width=width, seed=0)
        link = None if args.link_latency_ms is None else args.link_latency_ms / 1e3
        table = build_config_table(model, latency, device, edge, accuracies, link_latency_s=link)
        start = time.perf_counter()
        chosen = plan(table, args.latency_ms / 1e3, args.bandwidth_mbps * 1e6, args.mode)
        plan_s = time.perf_counter() - start
    except ValueError as error:
        return _fail(str(error))
    result = chosen.to_dict() | {"plan_s": plan_s, "device": device.name, "edge": edge.name,
                                 "model": args.model, "width": width, "accuracy_measured": table.accuracy_measured}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"feasible={str(chosen.feasible).lower()} exit={chosen.exit} partition={chosen.partition} "
        f"cut={chosen.cut} placement={chosen.placement} latency_ms={chosen.latency_s * 1e3:.3f} "
        f"device_ms={chosen.device_s * 1e3:.3f} transfer_ms={chosen.transfer_s * 1e3:.3f} "
        f"edge_ms={chosen.edge_s * 1e3:.3f} cut_bytes={chosen.cut_bytes} "
        f"accuracy={chosen.accuracy:.4f}{'' if table.accuracy_measured else '(depth-proxy)'} "
        f"requirement_ms={args.latency_ms:g} bandwidth_mbps={args.bandwidth_mbps:g} "
        f"device={device.name} edge={edge.name} plan_us={plan_s * 1e6:.1f}"
    )
    if chosen.reason:
        print(f"reason: {chosen.reason}")
    return 0


__all__ = ["register", "run_edgent"]
