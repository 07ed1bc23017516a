#!/usr/bin/env bash
# The device's masks on emulated ARM cores against the same binary's masks on this x86 machine.
#
#   bench/arm.sh OUT [LANES]      (root, for a private /proc/cpuinfo; Debian packages
#                                  gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user)
#
# Cross-builds `tvunet-edge` for aarch64 Linux and runs `tvunet-edge infer` on the labelled
# slices (model defaults: threshold, flip average) under qemu-aarch64, once per core profile and
# engine, and natively on x86 for reference. Then bench/arm_masks.py scores every run against the
# radiologist's masks and against the x86 masks of the same file.
#
# Core profiles: qemu's CPU model (its instruction set and HWCAP bits) with a /proc/cpuinfo of
# that core bind-mounted in a private mount namespace. qemu-user shows the host's cpuinfo, and
# tract picks its kernels from cpuinfo: the core's part number (Cortex-A53 and A55 have tuned
# kernels) and `asimdhp` (its fp16 kernels). So each profile runs the kernels a board with that
# core would run:
#   a76  qemu cortex-a76, cpuinfo Cortex-A76: generic arm64 kernels, fp16 and dot-product ones
#   a55  qemu cortex-a76, cpuinfo Cortex-A55: the A55-tuned kernels (qemu has no A55 model; the
#        A76 model has the same fp16 and dot-product instructions)
#   a53  qemu cortex-a53, cpuinfo Cortex-A53: no fp16 or dot-product instructions
#
# Emulation checks what the kernels compute, not how fast: its times say nothing of a board's.
#
# Env: DATA (labelled folder), SLICES (first N slices by name; default all), MODEL, MODEL_INT8,
# RUNS (run names, default all below), ARM_TARGET_DIR (cargo's target folder for the aarch64
# build; default the x86 one).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: bench/arm.sh OUT [LANES]}
lanes=${2:-2}
data=${DATA:-../shared/data/medseg/infnet_medseg100}
model=${MODEL:-models/tvunet-medseg-anchored.onnx}
model_int8=${MODEL_INT8:-models/tvunet-medseg-anchored.int8.onnx}
target=aarch64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
arm_target_dir=${ARM_TARGET_DIR:-$target_dir}

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc

mapfile -t slices < <(find "$data/images" -name '*.jpg' | sort -V | head -n "${SLICES:-100000}")
mkdir -p "$out"

# name: where it runs, engine, model file. Slowest first, so the lanes finish together.
declare -A spec=(
  [a76-f16]="a76 tract-f16 $model"
  [a55-f16]="a55 tract-f16 $model"
  [a76-fp32]="a76 tract $model"
  [a55-fp32]="a55 tract $model"
  [a53-fp32]="a53 tract $model"
  [a76-int8]="a76 tract $model_int8"
  [a55-int8]="a55 tract $model_int8"
  [a53-int8]="a53 tract $model_int8"
  [x86-fp32]="x86 tract $model"
  [x86-int8]="x86 tract $model_int8"
)
runs=${RUNS:-a76-f16 a55-f16 a76-fp32 a55-fp32 a53-fp32 a76-int8 a55-int8 a53-int8 x86-fp32 x86-int8}

one_run() {
  local name=$1 core engine file
  read -r core engine file <<<"${spec[$name]}"
  local args=(infer --engine "$engine" --model "$file" --out "$out/$name" "${slices[@]}")
  local started=$SECONDS
  case $core in
    x86) "$x86_bin" "${args[@]}" ;;
    a53) emulate cortex-a53 bench/arm/cortex-a53.cpuinfo "${args[@]}" ;;
    a55) emulate cortex-a76 bench/arm/cortex-a55.cpuinfo "${args[@]}" ;;
    a76) emulate cortex-a76 bench/arm/cortex-a76.cpuinfo "${args[@]}" ;;
  esac >"$out/$name.log" 2>&1
  echo "$name: $((SECONDS - started)) s, ${#slices[@]} slices"
}

# qemu-aarch64 with CPU model $1 and $2 as /proc/cpuinfo, running the ARM binary.
emulate() {
  local cpu=$1 cpuinfo=$2
  shift 2
  unshare -m sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' sh "$cpuinfo" \
    qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$arm_bin" "$@"
}

for name in $runs; do
  [[ -n ${spec[$name]:-} ]] || { echo "unknown run $name" >&2; exit 2; }
done
x86_bin=$target_dir/debug/tvunet-edge
arm_bin=$arm_target_dir/$target/debug/tvunet-edge
if [[ " $runs " == *" x86-"* ]]; then
  cargo build -p tvunet-device --bin tvunet-edge
fi
if [[ " $runs " =~ \ a[0-9]+- ]]; then
  CARGO_TARGET_DIR=$arm_target_dir cargo build -p tvunet-device --bin tvunet-edge --target "$target"
fi

for name in $runs; do
  while (($(jobs -rp | wc -l) >= lanes)); do wait -n; done
  one_run "$name" &
done
wait

python3 bench/arm_masks.py "$out" "$data" | tee "$out/summary.txt"
