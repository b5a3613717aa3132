#!/usr/bin/env bash
# Issue 17's accelerator check: does the input keep up with ViT-Plex B/32 and L/32 on this GPU?
#
#   bash benchmarks/gpu_check.sh               # on a lent accelerator host (one H200, 16 cores): < 5 minutes
#   bash benchmarks/gpu_check.sh --cpu-smoke   # anywhere: the same steps on the CPU at tiny sizes
#
# Steps:
#   1. a Python with plexbench's needs ($PYTHON, else ./.venv/bin/python, else python3);
#   2. the CUDA build of jax: kept if jax already sees the GPU, else installed with pip from the
#      wheels in $WHEEL_DIR (default ./.whl) or, failing that, the package index. If neither works
#      the script says so in one block and exits 3: nothing below can run without it;
#   3. tensorflow + tensorflow-datasets for the input pipeline: the same; without them the
#      pipeline is not measured on this host (said so), the model side still is;
#   4. benchmarks/pipeline.py --accelerator (--cpu-smoke): matmul peak of the device, bfloat16
#      forward of plex-vit-b32-imagenet and plex-vit-l32-imagenet at 384 px from random
#      official-layout checkpoints (images/s, MFU against the measured peak, the heteroscedastic
#      head's share), the pipeline's images/s on all host cores, engine.run fed by it, and whether
#      the input keeps up. The run is cut at $CHECK_SECONDS (default 270) so the whole check ends
#      inside 5 minutes. Without tensorflow, HOST_RATE=<img/s> gives "keeps up?" an input rate
#      measured elsewhere (e.g. the 16-core extrapolation in docs/performance.md), labelled as such.
# Exit: 0 done; 3 jax cannot use the accelerator; 4 plexbench's Python needs are missing; 124 cut at the limit.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 PLEXBENCH_QUIET=1

SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
WHEEL_DIR=${WHEEL_DIR:-.whl}
CHECK_SECONDS=${CHECK_SECONDS:-270}
START=$(date +%s)

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=$(command -v python3)
fi
echo "== gpu_check: $(date -u +%FT%TZ); python $PY ($("$PY" -V 2>&1)); $(nproc) cores; $(free -g | awk '/Mem:/ {print $2 " GiB"}') memory"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || echo "nvidia-smi: not found"

# pip_install NAME...: from $WHEEL_DIR when it exists (offline), else the index; 120 s at most.
# Never in smoke mode (it runs on a development machine's environment as it is).
pip_install() {
  [[ $SMOKE == 1 ]] && { echo "(smoke mode: not installing $*)"; return 1; }
  local where=()
  [[ -d "$WHEEL_DIR" ]] && where=(--no-index --find-links "$WHEEL_DIR")
  timeout 120 "$PY" -m pip install -q --disable-pip-version-check ${where[@]+"${where[@]}"} "$@" 2>&1 | tail -3
  return "${PIPESTATUS[0]}"
}

# --- plexbench's own needs (the model side) -----------------------------------------------------
if ! "$PY" -c "import numpy, scipy, flax, optax, yaml, tqdm, ml_dtypes" 2>/dev/null; then
  echo "plexbench's Python needs are missing; trying pip"
  pip_install numpy scipy flax optax pyyaml tqdm ml_dtypes
  if ! "$PY" -c "import numpy, scipy, flax, optax, yaml, tqdm, ml_dtypes" 2>/dev/null; then
    echo "ERROR: numpy/scipy/flax/optax/pyyaml/tqdm/ml_dtypes missing and not installable here"; exit 4
  fi
fi

# --- jax with the accelerator ----------------------------------------------------------------------
if [[ $SMOKE == 1 ]]; then
  export JAX_PLATFORMS=cpu
  echo "jax: CPU (smoke mode; no install attempted)"
else
  sees_gpu() { "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() in ('gpu', 'cuda', 'rocm') else 1)" 2>/dev/null; }
  if ! sees_gpu; then
    echo "jax does not see a GPU ($("$PY" -c 'import jax; print("jax", jax.__version__, jax.default_backend())' 2>&1 | tail -1)); installing the CUDA build"
    cuda_major=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -1)
    extras="cuda13 cuda12"
    [[ $cuda_major == 12 ]] && extras="cuda12 cuda13"
    for extra in $extras; do
      pip_install "jax[$extra]" && sees_gpu && break
    done
  fi
  if ! sees_gpu; then
    cat <<EOF
ERROR: CANNOT INSTALL THE CUDA BUILD OF JAX on this host.
  jax is missing or CPU-only, pip found no jax[cuda12]/jax[cuda13] (no wheels in $WHEEL_DIR, no package
  index reachable), so the accelerator cannot be measured. Bring the wheels: on a machine with PyPI, run
    python3 -m pip download --only-binary=:all: --python-version $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \\
      --platform manylinux_2_27_x86_64 -d .whl "jax[cuda12]"
  and run this script again with them in $WHEEL_DIR.
EOF
    exit 3
  fi
  "$PY" -c "import jax; print('jax', jax.__version__, '->', jax.default_backend(), jax.devices()[0].device_kind)"
fi

# --- the input pipeline's needs ---------------------------------------------------------------------
if ! "$PY" -c "import tensorflow, tensorflow_datasets, PIL" 2>/dev/null; then
  echo "tensorflow / tensorflow-datasets / pillow missing; trying pip (tensorflow-cpu; its ~250 MB wheel rarely travels)"
  pip_install tensorflow-cpu tensorflow-datasets pillow importlib_resources \
    || echo "NOTE: the input pipeline cannot be measured on this host (tensorflow not installable); the model side still is"
fi

elapsed=$(( $(date +%s) - START ))
budget=$(( CHECK_SECONDS - elapsed ))
(( budget < 60 )) && budget=60
args=(--accelerator)
[[ $SMOKE == 1 ]] && args=(--cpu-smoke)
echo "== benchmarks/pipeline.py ${args[*]} (cut at ${budget} s)"
# HOST_RATE (img/s): where the pipeline cannot run here, judge "keeps up?" against this rate (say where it came from)
[[ -n "${HOST_RATE:-}" ]] && args+=(--host-rate "$HOST_RATE")
timeout "$budget" "$PY" benchmarks/pipeline.py "${args[@]}" --skip-pipeline
rc=$?
(( rc == 124 )) && echo "gpu_check: cut at the ${budget} s limit; the lines above are what was measured"
echo "== gpu_check done in $(( $(date +%s) - START )) s (exit $rc)"
exit $rc
