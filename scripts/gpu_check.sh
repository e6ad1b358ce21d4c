#!/usr/bin/env bash
# One-shot GPU check on a lent H100/H200 (Python 3.12 with torch + CUDA preinstalled, no
# internet, no learn2learn/hydra). Prepare .gpu/ first, here: `bash scripts/prepare_gpu.sh`;
# then ONE device call: command "OUT=$OUT bash scripts/gpu_check.sh", carry [".gpu"], timeout 600.
#   (a) build learn2learn from its sdist in place (re-cythonized, docs/install.md) + wheels
#   (b) pytest -m gpu (CUDA-only tests)
#   (c) scripts/profile_engine.py: where an iteration's time goes and its kernel launches,
#       fused Adam (the configs') -> $OUT/profile.{json,md}; Adam's per-tensor loop (before)
#       -> $OUT/profile_loop.*; the compiled engine on one setting -> $OUT/profile_compiled.*
#   (d) scripts/cuda_graph_step.py: one meta-iteration captured in a CUDA graph vs eager
#       -> $OUT/cuda_graph.json
#   (e) scripts/benchmark.py --device cuda at full settings -> $OUT/engine.json
#   (f) experiment=maml_omniglot_5w1s on real Omniglot with the time left
#       (OMNIGLOT_ITERS, default 6000) -> $OUT/omniglot_results.json, iterations/s
# Every step has its own timeout and a failed step does not stop the next; the whole script
# stays under ~9.5 minutes. Logs and a summary land in $OUT (default outputs/gpu_check).
set -x
export PYTHONUNBUFFERED=1
cd "${REPO:-$(dirname "$0")/..}"
export OUT="${OUT:-outputs/gpu_check}"
mkdir -p "$OUT"
export PY="${PY:-python3}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
T0=$SECONDS

step() {  # step NAME SECONDS CMD...: run with a timeout, log to $OUT/NAME.log, record rc
    local name=$1 limit=$2; shift 2
    local t=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%-12s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t))" >> "$SUMMARY"
    tail -n 25 "$OUT/$name.log"
    return 0
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
} >> "$SUMMARY" 2>&1

# (a) learn2learn from its sdist, plus the pure-Python wheels, on PYTHONPATH (nothing installed
# into the image's site-packages).
export BUILD=/tmp/metalearn_gpu
mkdir -p "$BUILD/site"
setup() {
    if [ -d .gpu/learn2learn-0.2.0 ]; then cp -r .gpu/learn2learn-0.2.0 "$BUILD/"
    else tar xzf .gpu/learn2learn-0.2.0.tar.gz -C "$BUILD"; fi
    (cd "$BUILD/learn2learn-0.2.0" && "$PY" setup.py build_ext --inplace -j 4) || return 1
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$BUILD/site" \
        .gpu/*.whl .gpu/antlr4-python3-runtime-*.tar.gz || return 1
    if [ ! -d "$BUILD/site/gym" ] && [ -e .gpu/gym-0.26.2.tar.gz ]; then  # sdist only: pure Python
        tar xzf .gpu/gym-0.26.2.tar.gz -C "$BUILD" && cp -r "$BUILD/gym-0.26.2/gym" "$BUILD/site/"
    fi
    if [ -e .gpu/omniglot-py.tar.gz ]; then mkdir -p "$BUILD/data" && tar xzf .gpu/omniglot-py.tar.gz -C "$BUILD/data"; fi
    PYTHONPATH="$PWD:$BUILD/learn2learn-0.2.0:$BUILD/site" "$PY" -c \
        "import metalearn, learn2learn, hydra, omegaconf; print('imports ok', learn2learn.__version__, hydra.__version__)"
}
export -f setup  # `timeout` runs programs, not functions
step setup 150 bash -c setup
export PYTHONPATH="$PWD:$BUILD/learn2learn-0.2.0:$BUILD/site${PYTHONPATH:+:$PYTHONPATH}"

# (b) GPU-marked tests anywhere (the CPU suite runs in CI).
step gpu_tests 60 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors -rs

# (c) the profile first: it decides what to speed up (docs/performance.md); the launch counts
# before (Adam's loop) and after (fused), and with the compiled engine (inductor's kernels)
step profile 60 "$PY" scripts/profile_engine.py --device cuda --iterations 5 --out "$OUT/profile.json"
step profile_loop 45 "$PY" scripts/profile_engine.py --device cuda --iterations 5 --optimizer loop \
    --settings mini_5w1s_2nd omniglot_20w1s_2nd --out "$OUT/profile_loop.json"
step profile_compiled 120 "$PY" scripts/profile_engine.py --device cuda --iterations 5 \
    --engine compiled --settings mini_5w1s_2nd --out "$OUT/profile_compiled.json"

# (d) the whole step in a CUDA graph: possible only without host reads inside it
step cuda_graph 60 "$PY" scripts/cuda_graph_step.py --iterations 20 --out "$OUT/cuda_graph.json"

# (e) the benchmark at full settings (each setting saved as it ends: a timeout keeps the rest)
step benchmark 100 "$PY" scripts/benchmark.py --device cuda --repeats 3 --out "$OUT/engine.json"

# (f) the paper preset on real Omniglot, as far as the call allows; train.py's own timing
export METALEARN_DATA_DIR="$BUILD/data" METALEARN_CACHE_DIR="$BUILD/cache"
if [ -d "$BUILD/data/omniglot-py" ] && [ $(( 560 - SECONDS )) -gt 90 ]; then
    step omniglot $(( 560 - SECONDS )) bash -c '"$PY" train.py experiment=maml_omniglot_5w1s logger=none device=cuda \
        trainer.iterations=${OMNIGLOT_ITERS:-6000} trainer.eval_every=1000 \
        hydra.run.dir=/tmp/omniglot_run && cp /tmp/omniglot_run/results.json "$OUT/omniglot_results.json" \
        && "$PY" -c "import json; r = json.load(open(\"$OUT/omniglot_results.json\")); \
print(\"omniglot: %.2f +- %.2f%% after %d iterations, %.1f iterations/s (train time)\" % \
(100 * r[\"test_acc\"], 100 * r[\"test_acc_ci95\"], r[\"iterations\"], r[\"iterations\"] / r[\"train_time_s\"]))"'
fi

set +x
echo
echo "==== gpu_check summary ($((SECONDS - T0)) s) ===="
cat "$SUMMARY"
grep "^omniglot:" "$OUT/omniglot.log" || echo "(no Omniglot result)"
for p in profile profile_loop profile_compiled; do cat "$OUT/$p.md" 2>/dev/null || echo "(no $p table)"; done
cat "$OUT/cuda_graph.log" 2>/dev/null
grep -A 20 "^ *setting |" "$OUT/benchmark.log" || echo "(no benchmark table)"
