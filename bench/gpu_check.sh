#!/bin/sh
# The one device check for the ELS GPU path (issue 18): the kernel tests, then bench/els.py.
# Run it from the repository root on a machine with a GPU; it needs only cupy, numpy and pytest.
#   sh bench/gpu_check.sh            # logs under $OUT (the device tool's folder), else ./out/gpu-check
# Writes: summary.txt (one line per step, exit codes), nvidia-smi.txt, versions.txt, pytest.log,
# bench.txt (the table), bench.json. Each step has its own time limit, so a hang cannot eat the
# session's device time; the whole script stays under ~8 minutes on an H100/H200.
set -u
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
S="$OUT/summary.txt"
: > "$S"
step() {  # step NAME SECONDS COMMAND... : run with a limit, tee nothing, record the exit code
    name=$1 limit=$2
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name" 2>&1
    rc=$?
    echo "$name: exit $rc in $(( $(date +%s) - start )) s" >> "$S"
}
step nvidia-smi.txt 30 nvidia-smi
step versions.txt 60 python -c "import cupy, numpy, sys; print(sys.version); print('cupy', cupy.__version__, 'numpy', numpy.__version__); print(cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())"
# GPU tests first (the reason for the run), then the CPU kernel tests (tests needing yaml skip).
step pytest-gpu.log 240 python -m pytest -q -rs --confcutdir=tests/kernels -p no:cacheprovider tests/kernels/test_gpu.py
step pytest.log 240 python -m pytest -q -rs --confcutdir=tests/kernels -p no:cacheprovider tests/kernels --ignore=tests/kernels/test_gpu.py
step bench.txt 240 python bench/els.py --grids 100x100x200,200x200x1080 --gpu-grids 400x400x2000 --batch 64 --baseline-max-cells 0
step bench.json 240 python bench/els.py --grids 200x200x1080 --repeats 5 --batch 64 --baseline-max-cells 0 --json
cat "$S"
tail -n 3 "$OUT/pytest-gpu.log" "$OUT/pytest.log"
cat "$OUT/bench.txt"
