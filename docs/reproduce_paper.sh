#!/usr/bin/env bash
# Reproduce the dynamics experiments of MATH.md §5 with `kktembed trace` (run from the repository root,
# after `make setup`). Each run prints one JSON summary into docs/reproduce/<name>.json.
# Arguments restrict the runs to those names, e.g. `bash docs/reproduce_paper.sh gd_cnn`.
set -euo pipefail
K=${KKTEMBED:-.venv/bin/kktembed}
OUT=docs/reproduce
mkdir -p "$OUT"
ONLY=" $* "
run() {
  name=$1; shift
  if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]]; then return; fi
  echo "== $name: kktembed trace $*" >&2
  /usr/bin/time -f "   %e s" "$K" trace "$@" --json > "$OUT/$name.json"
}

run gd_separable       fixtures/paper_mlp_leaky.safetensors --split copies=2 --steps 100000 --lr 0.1 --every 1000
run gd_nonseparable    fixtures/paper_mlp_leaky.safetensors --dataset gaussians-overlap --split copies=2 --steps 100000 --lr 0.1 --every 1000
run sgd_identical      fixtures/paper_mlp_leaky.safetensors --split copies=2 --steps 100000 --lr 0.1 --batch 16 --every 1000
run sgd_different      fixtures/paper_mlp_leaky.safetensors --split copies=2 --steps 100000 --lr 0.1 --batch 16 --different-batches --every 1000 \
    --out "$OUT/sgd_different" --plot docs/trace_sgd_different_batches.png --force
run gd_cnn             fixtures/paper_cnn.safetensors --split copies=2 --steps 100000 --lr 0.001 --every 1000 \
    --out "$OUT/gd_cnn" --plot docs/trace_gd_cnn.png --force
run sgd_digits_mlp     fixtures/digits35_mlp_init.safetensors --split copies=2 --steps 10000 --lr 0.001 --batch 64 --every 100
run sgd_digits_cnn     fixtures/digits35_cnn_init.safetensors --split copies=2 --steps 10000 --lr 0.001 --batch 64 --every 100
