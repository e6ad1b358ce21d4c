#!/usr/bin/env bash
# One-shot GPU check of the batched MAML engine on a lent H100 (Python 3.12 with torch + CUDA
# preinstalled, no internet, no learn2learn). Needs, under .gpu/ in the repo (ignored by git,
# so pass `carry: [".gpu"]`): learn2learn-0.2.0.tar.gz (or the unpacked learn2learn-0.2.0/),
# and pure-Python wheels of gym, gym_notices, hydra-core, omegaconf, antlr4-python3-runtime.
#   (a) build learn2learn from its sdist in place (re-cythonized: ENGINEERING.md §1)
#   (b) pytest -m gpu, and the engine's gradient-equality tests on this machine
#   (c) scripts/benchmark.py --device cuda at full settings -> $OUT/engine.json
# Every step has its own timeout and a failed step does not stop the next; the whole script
# stays under ~10 minutes (one device call). Logs and a summary table land in $OUT (default outputs/gpu_check).
set -x
export PYTHONUNBUFFERED=1
cd "${REPO:-$(dirname "$0")/..}"
OUT="${OUT:-outputs/gpu_check}"
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
    for w in .gpu/gym-*.whl .gpu/gym_notices-*.whl .gpu/hydra_core-*.whl .gpu/omegaconf-*.whl \
             .gpu/antlr4_python3_runtime-*.whl; do
        [ -e "$w" ] && "$PY" -m pip install --no-index --no-deps --target "$BUILD/site" "$w"
    done
    if [ ! -d "$BUILD/site/gym" ] && [ -e .gpu/gym-0.26.2.tar.gz ]; then  # sdist only: pure Python
        tar xzf .gpu/gym-0.26.2.tar.gz -C "$BUILD" && cp -r "$BUILD/gym-0.26.2/gym" "$BUILD/site/"
    fi
    PYTHONPATH="$PWD:$BUILD/learn2learn-0.2.0:$BUILD/site" "$PY" -c \
        "import metalearn, learn2learn, hydra, omegaconf; print('imports ok', learn2learn.__version__, hydra.__version__)"
}
export -f setup  # `timeout` runs programs, not functions
step setup 150 bash -c setup
export PYTHONPATH="$PWD:$BUILD/learn2learn-0.2.0:$BUILD/site${PYTHONPATH:+:$PYTHONPATH}"

# (b) GPU-marked tests anywhere, then the whole engine test file (CPU float64 checks included).
step gpu_tests 60 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors -rs
step engine_tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/algorithms/test_engine.py

# (c) the benchmark at full settings, then a short table last.
# the real loop on CUDA: sampler on device, batched engine (auto), checkpoints, results.json
step train_cuda 45 bash -c '"$PY" train.py dataset=synthetic logger=none device=cuda \
    trainer.iterations=30 trainer.eval_every=15 trainer.val_episodes=100 trainer.test_episodes=600 \
    hydra.run.dir=/tmp/train_run && cat /tmp/train_run/results.json' 
step benchmark 240 "$PY" scripts/benchmark.py --device cuda --repeats 5 --out "$OUT/engine.json"

set +x
echo
echo "==== gpu_check summary ($((SECONDS - T0)) s) ===="
cat "$SUMMARY"
grep -A 20 "^ *setting |" "$OUT/benchmark.log" || echo "(no benchmark table)"
