# Speed ratios on an idle borrowed machine, pinned to two cores as this one has:
# `OUT=dir bash benchmarks/ratios_check.sh` from the repo root, wheels in .whl/.
# Also re-runs the fine-tuning tests on CUDA. Logs go to $OUT.
source benchmarks/device_env.sh
{ nproc; lscpu | grep -E "Model name|Flags" | sed 's/Flags:.*\(avx512f\).*/Flags: ... avx512f .../'; } \
    2>&1 | tee "$OUT/cpu.log"
timeout 200 python3 -m pytest -q -p no:cacheprovider -o addopts= tests/test_finetune.py \
    2>&1 | tail -n 15 | tee "$OUT/finetune_cuda.log"
CORES=${CORES:-0,1}
# two threads on two cores: FAISS, BLAS and torch size their pools by os.cpu_count()
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2
timeout 330 taskset -c "$CORES" python3 benchmarks/bench_ratios.py --parts voter \
    --simd native,avx2 --loads idle,loaded --repeats 7 2>&1 | tee "$OUT/ratios.md"
echo "ratios: rc ${PIPESTATUS[0]}; took ${SECONDS} s" | tee -a "$OUT/ratios.md"
