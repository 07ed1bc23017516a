#!/usr/bin/env bash
# Latency of candidate network shapes: for each DEPTH:BASE:SIDE, a one-epoch run gives an ONNX
# file of that shape (latency does not depend on the weights), which the device bench times in
# tract with 1 and 2 threads and bench/ort.py in onnxruntime. DEPTH:BASE:SIDE:separable takes
# an untrained file from bench/separable.py instead, with depthwise-separable convolutions.
#
#   bench/networks.sh OUT [DEPTH:BASE:SIDE[:separable] ...]
#
# TVUNET names the tvunet binary (default target/release/tvunet); the device bench must be built
# (`cargo bench -p tvunet-device --features ort --bench latency --no-run`). Prints one line per
# shape and writes OUT/networks.csv.
set -euo pipefail
out=$1
shift
shapes=${*:-"4:32:256 4:16:256 4:12:256 4:8:256 4:16:192 3:16:256"}
bin=${TVUNET:-target/release/tvunet}
data=${CV_DATA:-../shared/data/medseg/infnet_medseg100}
bench=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/latency-* | grep -v '\.d$' | head -1)
mkdir -p "$out"
echo "depth,base,side,conv,file_bytes,tract_1t_ms,tract_2t_ms,ort_1t_ms,ort_2t_ms" \
    > "$out/networks.csv"
for shape in $shapes; do
    IFS=: read -r depth base side conv <<< "$shape"
    conv=${conv:-plain}
    name="d${depth}b${base}s${side}"
    [ "$conv" = plain ] || name="$name-$conv"
    if [ "$conv" != plain ] && [ ! -f "$out/$name.onnx" ]; then
        python3 "$(dirname "$0")/separable.py" "$out/$name.onnx" "$depth" "$base" "$side" "$conv"
    elif [ ! -f "$out/$name.onnx" ]; then
        RAYON_NUM_THREADS=1 "$bin" train --data "$data" --out "$out/$name" --epochs 1 \
            --depth "$depth" --base "$base" --input-size "$side" > "$out/$name.log" 2>&1
        "$bin" export --checkpoint "$out/$name" --out "$out/$name.onnx" --data "$data" \
            >> "$out/$name.log" 2>&1
    fi
    model=$(realpath "$out/$name.onnx")
    t1=$("$bench" "$model" 20 --threads=1 | awk '/network only/ {print $4}')
    t2=$("$bench" "$model" 20 --threads=2 | awk '/network only/ {print $4}')
    o1=$(python3 bench/ort.py "$model" 30 1 | awk '{print $6}')
    o2=$(python3 bench/ort.py "$model" 30 2 | awk '{print $6}')
    bytes=$(stat -c %s "$model")
    echo "$depth,$base,$side,$conv,$bytes,$t1,$t2,$o1,$o2" >> "$out/networks.csv"
    echo "$name: $bytes B; tract $t1 ms (1 thread), $t2 ms (2); onnxruntime $o1 / $o2 ms"
done
