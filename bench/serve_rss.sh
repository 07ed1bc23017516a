#!/usr/bin/env bash
# Peak RSS of `tvunet-edge serve` on its own: starts it on loopback TCP with MODEL, sends the
# bundled real slices through `tvunet send` ROUNDS times, and reads the server's VmHWM.
#
#   bench/serve_rss.sh MODEL [ROUNDS] [THREADS]
#
# EDGE and TVUNET name the binaries (default target/release/tvunet-edge and target/release/tvunet).
set -euo pipefail
model=$1 rounds=${2:-5} threads=${3:-1}
edge=${EDGE:-target/release/tvunet-edge}
host=${TVUNET:-target/release/tvunet}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
"$edge" serve --model "$model" --tcp 127.0.0.1:0 --threads "$threads" > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 100); do
    grep -q "listening tcp" "$work/out" && break
    sleep 0.1
done
addr=$(awk '/listening tcp/ {print $3}' "$work/out")
for _ in $(seq "$rounds"); do
    "$host" send --tcp "$addr" tests/fixtures/medseg/images/* --out "$work/masks" > /dev/null 2>&1
done
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
slices=$(ls tests/fixtures/medseg/images | wc -l)
echo "$(basename "$model"): tvunet-edge serve peak RSS $((hwm / 1024)) MiB" \
    "after $rounds x $slices slices, $threads thread(s); file $(stat -c %s "$model") B"
