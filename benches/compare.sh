#!/usr/bin/env bash
# Side by side on one corpus, in one run: sentence-transformers (PyTorch CPU), ONNX Runtime (plain export,
# with its BERT graph optimizer, and its dynamic int8 quantization) and recall's embedder at each precision
# (f32, bf16, int8), each with 2 threads and length-sorted batches; every variant's vectors are compared
# with sentence-transformers' (cosine, min and mean over the corpus).
#   benches/compare.sh [CORPUS.jsonl]      (default: tests/fixtures/minilm-reference.jsonl)
# The Python packages go into a cached venv under .cache/compare-venv on first use. PyTorch from PyPI
# brings its CUDA libraries (about 6 GB) even for CPU use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
corpus=${1:-tests/fixtures/minilm-reference.jsonl}
threads=${THREADS:-2}
./scripts/setup
venv=.cache/compare-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sentence_transformers, onnxruntime, onnx" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "sentence-transformers>=3" onnxruntime onnx onnxscript
fi
cargo build --release --quiet --workspace
mkdir -p .cache/compare
vectors=()
for precision in ${PRECISIONS:-f32 bf16 int8}; do
  echo "== recall, $precision"
  ./target/release/recall-bench embed --corpus "$corpus" --threads "$threads" --passes 3 --precision "$precision"
  ./target/release/recall embed --precision "$precision" --threads "$threads" "$corpus" > ".cache/compare/recall-$precision.jsonl"
  vectors+=(--recall "$precision=.cache/compare/recall-$precision.jsonl")
done
echo "== sentence-transformers and ONNX Runtime"
OMP_NUM_THREADS=$threads "$venv/bin/python" benches/compare.py --corpus "$corpus" --model models/all-MiniLM-L6-v2 \
  --threads "$threads" --work .cache/compare "${vectors[@]}"
