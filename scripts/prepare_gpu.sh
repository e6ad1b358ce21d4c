#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what scripts/gpu_check.sh needs on a lent GPU machine, which
# has Python 3.12 + torch + CUDA but no package index: learn2learn's sdist (built there),
# pure-Python wheels of hydra/omegaconf/antlr4/gym_notices, gym's sdist, and Omniglot as a
# tar.gz. Run here (a machine with the package registry) before the one device call:
#   bash scripts/prepare_gpu.sh [DATA_DIR]      # DATA_DIR holds omniglot-py/ (default ../shared/data)
# then, with the device tool: command "OUT=$OUT bash scripts/gpu_check.sh", carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${METALEARN_DATA_DIR:-../shared/data}}"
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
# the venv (make install) has setuptools, wheel and Cython for the sdists' metadata
PIP="${PIP:-.venv/bin/python -m pip}"
$PIP download -q --no-deps --no-build-isolation --no-binary learn2learn,gym -d .gpu learn2learn==0.2.0 gym==0.26.2
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    --platform any -d .gpu hydra-core==1.3.2 omegaconf==2.3.0 gym_notices
# config validation: pydantic and its compiled core for the GPU machine's Python 3.12
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu \
    "pydantic==$(grep -i '^pydantic==' requirements/constraints.txt | cut -d= -f3)" \
    "pydantic_core==$(grep -i '^pydantic_core==' requirements/constraints.txt | cut -d= -f3)" \
    "annotated_types==$(grep -i '^annotated.types==' requirements/constraints.txt | cut -d= -f3)" \
    "typing_inspection==$(grep -i '^typing.inspection==' requirements/constraints.txt | cut -d= -f3)"
# antlr4's runtime for Python ships as an sdist only; it is pure Python
$PIP download -q --no-deps --no-build-isolation --no-binary antlr4-python3-runtime -d .gpu antlr4-python3-runtime==4.9.3
if [ -d "$DATA/omniglot-py/images_background" ]; then
    tar czf .gpu/omniglot-py.tar.gz -C "$DATA" omniglot-py
else
    echo "warning: no $DATA/omniglot-py: the paper-length Omniglot run will be skipped" >&2
fi
du -sh .gpu; ls .gpu
