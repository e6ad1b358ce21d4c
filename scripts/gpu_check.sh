#!/usr/bin/env bash
# One-shot GPU check on a lent H100/H200 (Python 3.12 with torch + CUDA preinstalled, no
# internet, no learn2learn/hydra). Prepare .gpu/ first, here: `bash scripts/prepare_gpu.sh`;
# then ONE device call: command "OUT=$OUT bash scripts/gpu_check.sh", carry [".gpu"], timeout 600.
#   (a) build learn2learn from its sdist in place (re-cythonized, docs/install.md) + wheels
#   (b) pytest -m gpu (CUDA-only tests)
#   (c) scripts/profile_engine.py: where an iteration's time goes -> $OUT/profile.{json,md}
#   (d) experiment=maml_omniglot_5w1s on real Omniglot, as many iterations as fit
#       (OMNIGLOT_ITERS, default 6000) -> $OUT/omniglot_results.json, iterations/s
#   (e) scripts/benchmark.py --device cuda at full settings -> $OUT/engine.json
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
step gpu_tests 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors -rs

# (c) the profile first: it decides what to speed up (docs/performance.md)
step profile 75 "$PY" scripts/profile_engine.py --device cuda --iterations 5 --out "$OUT/profile.json"

# (d) the paper preset on real Omniglot, as far as the call allows; train.py's own timing
export METALEARN_DATA_DIR="$BUILD/data" METALEARN_CACHE_DIR="$BUILD/cache"
if [ -d "$BUILD/data/omniglot-py" ]; then
    step omniglot 270 bash -c '"$PY" train.py experiment=maml_omniglot_5w1s logger=none device=cuda \
        trainer.iterations=${OMNIGLOT_ITERS:-6000} trainer.eval_every=1000 \
        hydra.run.dir=/tmp/omniglot_run && cp /tmp/omniglot_run/results.json "$OUT/omniglot_results.json" \
        && "$PY" -c "import json; r = json.load(open(\"$OUT/omniglot_results.json\")); \
print(\"omniglot: %.2f +- %.2f%% after %d iterations, %.1f iterations/s (train time)\" % \
(100 * r[\"test_acc\"], 100 * r[\"test_acc_ci95\"], r[\"iterations\"], r[\"iterations\"] / r[\"train_time_s\"]))"'
fi

# (e) the benchmark at full settings (each setting saved as it ends: a timeout keeps the rest)
step benchmark $(( 560 - SECONDS > 60 ? 560 - SECONDS : 60 )) "$PY" scripts/benchmark.py --device cuda --repeats 5 --out "$OUT/engine.json"

set +x
echo
echo "==== gpu_check summary ($((SECONDS - T0)) s) ===="
cat "$SUMMARY"
grep "^omniglot:" "$OUT/omniglot.log" || echo "(no Omniglot result)"
cat "$OUT/profile.md" 2>/dev/null || echo "(no profile table)"
grep -A 20 "^ *setting |" "$OUT/benchmark.log" || echo "(no benchmark table)"
