#!/usr/bin/env bash
# GPU readiness in one short run (well under 8 minutes on one H100/H200):
#   1. the CUDA tests (tests/test_engine.py, tests/test_model.py, tests/test_speed_modes.py, -k cuda),
#   2. fp16 / bf16 autocast against fp32 on Set5 with the bundled RGB model (benchmarks/gpu_precision.py),
#   3. the engine benchmark on the GPU: 128x128 -> x4 and the paper's Table 4 sizes (one RGB 48x48 -> 128, 256, 512).
#
#   bash benchmarks/gpu_check.sh [SET5_DIR]        (default ../shared/data/benchmarks/Set5)
#   OUT=/somewhere bash benchmarks/gpu_check.sh    (logs and JSON; default /tmp/gpu_check)
#
# Needs only python3 with torch (CUDA), numpy, scipy, scikit-image, safetensors; the package need not be
# installed (PYTHONPATH=src), napari and Qt are not imported. Without pytest the CUDA tests run through a
# minimal runner below. Every step has a hard time limit, so the script cannot hang; without CUDA it says
# so and exits 0. Exit code: 0 when every step passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 1
SET5=${1:-../shared/data/benchmarks/Set5}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}

if ! timeout 120 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "SKIP: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing to check here."
    exit 0
fi
{ command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"; } 2>&1 | tee "$OUT/device.txt"

failed=()
step() {  # step NAME SECONDS command...: run with a hard limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}
: > "$OUT/summary.txt"

TESTS=(tests/test_engine.py tests/test_model.py tests/test_speed_modes.py)
if "$PY" -c "import pytest" 2>/dev/null; then
    step cuda-tests 150 "$PY" -m pytest -p no:cacheprovider -q -rs "${TESTS[@]}" -k cuda
else
    echo "pytest is not installed: running the test_cuda_* functions with a minimal runner"
    step cuda-tests 150 "$PY" - "${TESTS[@]}" <<'EOF'
import importlib.util, sys, traceback, types
sys.path.insert(0, "tests")
# just enough of pytest for these files to import: marks, fixtures and raises
pytest = types.ModuleType("pytest")
class _Mark:
    def __getattr__(self, name):
        return lambda *a, **k: (lambda f: f)
pytest.mark = _Mark()
pytest.fixture = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda f: f))
def _raises(exc, match=None):
    import contextlib, re
    @contextlib.contextmanager
    def cm():
        try:
            yield
        except exc as e:
            assert match is None or re.search(match, str(e)), str(e)
        else:
            raise AssertionError(f"did not raise {exc}")
    return cm()
pytest.raises = _raises
sys.modules["pytest"] = pytest
failures = passed = 0
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in sorted(n for n in dir(module) if n.startswith("test_cuda")):
        try:
            getattr(module, name)()
            passed += 1
            print(f"PASSED {path}::{name}")
        except Exception:
            failures += 1
            print(f"FAILED {path}::{name}")
            traceback.print_exc()
print(f"{passed} passed, {failures} failed")
sys.exit(1 if failures or not passed else 0)
EOF
fi

if [ -d "$SET5" ]; then
    step precision 150 "$PY" benchmarks/gpu_precision.py "$SET5" --device cuda --precisions fp16,bf16 \
        --scales 2,3,4 --json "$OUT/precision.json"
else
    echo "SKIP precision: Set5 folder $SET5 not found (pass it as the first argument)" | tee -a "$OUT/summary.txt"
    failed+=("precision (no Set5 folder)")
fi

step bench 180 "$PY" benchmarks/bench_engine.py --device cuda --scales 4 --repeat 5 \
    --precision fp32,fp16,bf16 --json "$OUT/bench.json"

echo "== outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "ALL PASSED"
