#!/usr/bin/env bash
# Everything issue 4 measures on a GPU, as one device call of at most ~9 minutes (a session is lent 15 minutes of
# device time, machine start included). Prepare the carried folders here first: bash scripts/gpu_carry.sh. Then:
#
#   run(command="bash bench/gpu_session.sh", carry=[".whl", ".gpu"], timeout_s=590)
#
# Results land in $OUT: cuda_tests.log, profile.log, bench.log and the benchmark's JSON and tables.
# Budgets (seconds, environment): TEST_S (CUDA tests, 150), PROFILE_S (step profile, 120), BUDGET_S (benchmark, 280).
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run scripts/gpu_carry.sh and carry .whl"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/bench PYTHONUNBUFFERED=1 TUNESMITH_CACHE=/tmp/tc HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, triton; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
# 1. correctness on CUDA: packed = unpacked, bf16 against fp32, Liger against transformers, no host syncs in the
#    head loss, a whole run
timeout "${TEST_S:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_liger.py 2>&1 \
  | tee "$OUT/cuda_tests.log" | tail -15
# 2. steady-state step times of the default path (length-grouped rows) with and without Liger
timeout "${PROFILE_S:-120}" python3 bench/gpu_step_profile.py --tokenizer .gpu/tok --data .gpu/bitext.csv \
  --configs padded+liger,padded --steps 12 2>&1 | tee "$OUT/profile.log" | grep -E "step ms|tokens/s"
# 3. the table: HF Trainer + PEFT against tunesmith's defaults, both shapes
python3 bench/train_throughput_gpu.py --tokenizer .gpu/tok --data .gpu/bitext.csv --out "$OUT" \
  --shapes "${SHAPES:-Llama-3.2-1B,SmolLM2-135M}" --variants "${VARIANTS:-a,c}" --budget-s "${BUDGET_S:-280}" 2>&1 \
  | tee "$OUT/bench.log" | grep -v "Writing model shards"
