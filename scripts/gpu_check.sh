#!/usr/bin/env bash
# The ONE prepared check for a GPU machine (lent now and then, for minutes; budget: under 8 minutes).
# Worst case 10 minutes (the step limits add up to 600 s), typically less. There: torch with CUDA, nvcc, numpy, pytest; no nerfstudio, no tyro, no package registry. From the
# repository root:   bash scripts/gpu_check.sh [OUT_DIR]
# Beforehand, where pip reaches a registry: bash scripts/gpu_wheels.sh (retrieval's asmk + faiss into .whl/),
# and carry .whl to the GPU machine; without it the SLAM runs there have no loop closure.
#  1. builds the CUDA (and CPU) kernels for THIS GPU's architecture only;
#  2. runs the CUDA tests: kernels vs their PyTorch twins (float32 and float64), the keyframe store on CUDA,
#     a SLAM run on CUDA against the same run on CPU;
#  3. prints GPU timings: network encoder / decoder per pair in fp32 and bf16, IPM + refinement per pair,
#     GN per edge, tracking frames/s with the oracle prior and with the full random-weight network;
#  4. times 4 candidate pairs per decoder call (backend.decode_batch) and measures the bf16 / fp16
#     network's drift from fp32 (benchmarks/bench_precision.py);
#  5. times the network's calls as CUDA graphs (--cuda-graphs) against the plain calls, and a SLAM run
#     with the full bf16 network with and without them (benchmarks/bench_cuda_graphs.py).
# Every step has its own time limit and the script goes on after a failure; the summary at the end says
# which steps passed. Output also goes to OUT_DIR/gpu_check.log (default: $OUT or ./gpu_check_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MSLAM_NS_CACHE=${MSLAM_NS_CACHE:-$PWD/.gpu_cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
declare -A status

# Keyframe retrieval (asmk + faiss-cpu) is not on the GPU machine: scripts/gpu_wheels.sh fetches it into .whl/
# beforehand (carry .whl); installed here into a private folder, asmk compiled from source with this Python.
# Without it the SLAM runs without loop closure or relocalisation (and says so).
if compgen -G ".whl/*" >/dev/null && ! $PY -c "import asmk.kernel" 2>/dev/null; then
  SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
  PIP="$PY -m pip install -q --no-index --no-deps --no-cache-dir --no-build-isolation --target $SITE"
  # faiss first: asmk's setup.py refuses to build without it
  if $PIP .whl/*.whl >"$OUT_DIR/wheels.log" 2>&1 && PYTHONPATH="$SITE" $PIP .whl/*.tar.gz >>"$OUT_DIR/wheels.log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$SITE"  # only asmk, faiss, pyaml there: nothing of the machine is shadowed
  else
    echo "installing .whl/ failed (see $OUT_DIR/wheels.log): no retrieval"
  fi
fi

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2
  shift 2
  echo "=== $name (limit ${secs}s) ==="
  local t0=$SECONDS
  if timeout "$secs" "$@"; then status[$name]="ok ($((SECONDS - t0))s)"; else status[$name]="FAILED rc=$? ($((SECONDS - t0))s)"; fi
}

echo "=== environment ==="
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device:", torch.cuda.is_available() and torch.cuda.get_device_name())
for m in ("numpy", "scipy", "PIL", "yaml", "pytest", "asmk", "faiss", "av"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '')}")
    except ImportError:
        print(f"  {m}: missing")
EOF
CAP=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "")
if [ -z "$CAP" ]; then
  echo "no CUDA device: only the CPU parts run (this checks the script itself)"
else
  export TORCH_CUDA_ARCH_LIST="$CAP"  # this GPU only: every extra architecture multiplies the build time
  NVCC=$(command -v nvcc || true)
  [ -n "$NVCC" ] && export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}
  echo "building for sm_${CAP/./} with CUDA_HOME=${CUDA_HOME:-?}"
fi

step build 180 $PY - <<'EOF'
import time, torch
from mslam_ns.cuda import _backend
devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ok = True
for dev in devs:
    for name in ("matching", "gn"):
        t = time.perf_counter()
        mod = _backend.get(name, torch.device(dev))
        print(f"  {name:8s} {dev:4s}: {'built' if mod is not None else 'NOT BUILT (twin fallback)'} in {time.perf_counter() - t:.0f} s")
        ok &= mod is not None
raise SystemExit(0 if ok else 1)
EOF

step cuda_tests 100 $PY -m pytest -q -x -p no:cacheprovider \
  tests/cuda/test_matching_kernels.py tests/cuda/test_gn_kernels.py tests/cuda/test_gn_jacobians.py \
  tests/prior/test_cuda_graphs.py \
  tests/slam/test_matching_pipeline.py::test_match_cuda_matches_cpu \
  tests/slam/test_matching_pipeline.py::test_match_with_known_rays_cuda_matches_cpu \
  tests/slam/test_shared_map.py tests/slam/test_cuda_slam.py \
  tests/slam/test_spill.py::test_spilled_keyframes_come_back_on_the_gpu

if [ -n "$CAP" ]; then
  step timings_kernels_and_slam 110 $PY benchmarks/bench_gpu.py --frames 40
else  # the CPU dry run: the full random-weight network would take minutes per frame here
  step timings_kernels_and_slam 120 $PY benchmarks/bench_gpu.py --frames 12 --skip-network
fi

if [ -n "$CAP" ]; then
  step network_fp32 50 $PY benchmarks/bench_network.py --device cuda --amp none --repeats 3 --skip-unbatched
  step network_bf16 50 $PY benchmarks/bench_network.py --device cuda --amp bf16 --repeats 3 --skip-unbatched
  # the backend's candidate pairs, 4 per decoder call (backend.decode_batch 4): per-pair time vs network_bf16's
  step decode_batch4 35 $PY benchmarks/bench_network.py --device cuda --amp bf16 --repeats 3 --skip-unbatched \
    --skip-peak --pairs 4
  step precision_drift 35 bash -c "$PY benchmarks/bench_precision.py --device cuda --amp bf16 && $PY benchmarks/bench_precision.py --device cuda --amp fp16"
  step cuda_graphs 40 $PY benchmarks/bench_cuda_graphs.py --device cuda --amp bf16 --slam-frames 20
else
  step network_smoke 90 $PY benchmarks/bench_network.py --smoke --repeats 1 --skip-unbatched
  step precision_drift 35 $PY benchmarks/bench_precision.py --smoke --repeats 1
  step cuda_graphs 40 $PY benchmarks/bench_cuda_graphs.py --smoke --repeats 1 --height 48 --width 64 --slam-frames 4
fi

echo "=== summary ==="
for k in build cuda_tests timings_kernels_and_slam network_fp32 network_bf16 decode_batch4 network_smoke \
  precision_drift cuda_graphs; do
  [ -n "${status[$k]:-}" ] && echo "  $k: ${status[$k]}"
done
