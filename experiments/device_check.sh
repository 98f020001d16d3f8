#!/usr/bin/env bash
# Device check on a machine with a GPU (issue 18): a population of GPU terminals trains, and gives
# the accuracy of the same run on the CPU. Installed with ../shared/tools/device-pack; run from
# outside the repo root, e.g. `source .devpack/install.sh && cd /tmp && bash $REPO/experiments/device_check.sh`.
# Prints one line per run: `run=<name> final_accuracy=<x> ...` and the CUDA memory of the terminals,
# then the GPU tests (tests/test_gpu.py: CUDA replies equal the CPU's) and bench_engine's
# 100-terminal workload on every core (`efficiency=`, `busy=`, `app_speed=`, `feeds=` ...), on one core fewer and through Ray calls only,
# then bench_driver on it (the MLP, then the CNN's shared-model A/B). About 3 minutes on a 16-core H200 host
# without the second and third bench_engine lines and bench_driver, which take ~40 s each, ~30 s and ~50 s on the 2-core development machine.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-/tmp/fedsplit-device-check}
mkdir -p "$out"
common=(--set rounds=5 --set model.name=cnn --set train.local_epochs=1 --set progress=false --set "out_dir=$out")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# 8 jetson-nano terminals: Ray budget num_gpus = 0.25 each, so they train on the GPU.
fedsplit simulate "${common[@]}" --set 'devices={jetson-nano=8}' --set run_name=gpu 2>&1 | tail -3
# The same terminals with no GPU budget: the same run on the CPU.
fedsplit simulate "${common[@]}" --set 'devices={jetson-cpu=8}' --set 'profiles={jetson-cpu={base="jetson-nano", num_gpus=0.0}}' --set run_name=cpu 2>&1 | tail -3
# Split learning with GPU terminals.
fedsplit simulate "${common[@]}" --set 'devices={jetson-nano=8}' --set training.mode=splitfed-v1 --set model.name=fedavg-cnn --set split.cut=features.2 --set run_name=splitfed-gpu 2>&1 | tail -3
python3 - "$out" <<'PY'
import json, sys, pathlib
for run in ("gpu", "cpu", "splitfed-gpu"):
    path = pathlib.Path(sys.argv[1]) / run / "summary.json"
    if path.is_file():
        s = json.loads(path.read_text())
        print(f"run={run} final_accuracy={s['final_metrics'].get('accuracy')} failed={s['failed']} rejected={s['rejected']} "
              f"max_gpu_mem_bytes={s.get('max_gpu_mem_bytes', {})}")
    else:
        print(f"run={run} missing summary (the run failed: see above)")
PY
# GPU tests: a train message and a split step on CUDA equal the CPU (skipped, with the reason, without CUDA).
timeout 150 python3 -m pytest -q "$repo/tests/test_gpu.py" -rs -p no:cacheprovider 2>&1 | tail -5
# The engine on every core with 100 terminals a round (one warm-up and one timed pass; no Flower).
timeout 180 python3 "$repo/experiments/bench_engine.py" --workloads mlp100 --no-flower --passes 1 2>&1 | grep '^workload='
# The same with one core left to the driver (its serial work is not time-sliced against an actor): compare fedsplit_s.
timeout 180 python3 "$repo/experiments/bench_engine.py" --workloads mlp100 --no-flower --passes 1 --actors "$(( $(nproc) - 1 ))" 2>&1 | grep '^workload=.* pure_s'
# The same on every core through Ray calls only (transport=ray): compare efficiency and feeds with the first line.
timeout 180 python3 "$repo/experiments/bench_engine.py" --workloads mlp100 --no-flower --passes 1 --transport ray 2>&1 | grep '^workload=.* pure_s'
# The server's own time per round (terminals that answer at once), in-process and on Ray with an actor per core,
# through Ray calls (transport=ray) and through a Unix socket per actor (transport=channel, the default).
timeout 120 python3 "$repo/experiments/bench_driver.py" --workloads mlp100 --passes 5 --ray-actors "$(nproc)" 2>&1 | grep '^workload='
timeout 120 python3 "$repo/experiments/bench_driver.py" --workloads mlp100 --passes 5 --ray-actors "$(nproc)" --transport ray 2>&1 | grep '^workload=.*engine=ray'
# A large global model on an actor per core: put in the object store once a round (shared_records=on) against
# pickled into every call (off), pass by pass (~50 s on the 2-core development machine).
timeout 180 python3 "$repo/experiments/bench_driver.py" --workloads cnn --passes 3 --ray-actors "$(nproc)" 2>&1 | grep '^workload='
