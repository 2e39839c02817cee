#!/usr/bin/env bash
# The CUDA path on a machine with an NVIDIA GPU, checked and measured in one run:
#   benches/cuda.sh [CORPUS.jsonl]      (default: tests/fixtures/minilm-reference.jsonl)
# 1. correctness: the 64 reference texts through `recall embed --device cuda`, batched and one per batch,
#    each at cosine >= 0.9999 with sentence-transformers' vector;
# 2. throughput: `recall-bench embed --device cuda` at several batch budgets, the CPU beside it;
# 3. sentence-transformers on the same GPU, when python3 has it (benches/compare.py --device cuda).
# RECALL_BIN names a prebuilt `recall` (with `recall-bench` beside it); without it the script builds both with `--features recall/cuda` (needs nvcc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
corpus=${1:-tests/fixtures/minilm-reference.jsonl}
model=${RECALL_MODEL:-models/all-MiniLM-L6-v2}
bin=${RECALL_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --features recall/cuda --quiet --workspace
  bin=target/release/recall
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== correctness against sentence-transformers (tests/fixtures/minilm-reference.jsonl)"
reference=tests/fixtures/minilm-reference.jsonl
"$bin" embed --device cuda --model "$model" "$reference" >"$work/batched.jsonl"
"$bin" embed --device cuda --model "$model" --max-batch-tokens 1 "$reference" >"$work/single.jsonl"
python3 benches/check_reference.py "$reference" "$work/batched.jsonl"
python3 benches/check_reference.py "$reference" "$work/single.jsonl"

echo "== --device auto picks the GPU"
"${bin}-bench" embed --device auto --model "$model" --corpus "$reference" --passes 1 | tee "$work/auto.txt"
grep -q " on cuda:" "$work/auto.txt" || { echo "--device auto did not pick the GPU" >&2; exit 1; }

echo "== recall-bench embed on $corpus"
for budget in 8192 32768 131072; do
  echo "--max-batch-tokens $budget"
  "${bin}-bench" embed --device cuda --model "$model" --corpus "$corpus" --max-batch-tokens "$budget" --passes 5
done
echo "CPU, every core:"
"${bin}-bench" embed --device cpu --model "$model" --corpus "$corpus" --passes 1

if python3 -c "import torch, sentence_transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "== sentence-transformers on the same GPU"
  for batch in 32 256; do
    python3 benches/compare.py --corpus "$corpus" --model "$model" --device cuda --batch "$batch" --work "$work"
  done
fi
