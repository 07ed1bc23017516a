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
# that core bind-mounted in a private mount namespace. qemu-user 7.2 (Debian 12) shows the
# host's cpuinfo, and tract picks its kernels from cpuinfo: the core's part number (Cortex-A53
# and A55 have tuned kernels) and `asimdhp` (its fp16 kernels). So each profile runs the kernels
# a board with that core would run:
#   a76  qemu cortex-a76, cpuinfo Cortex-A76: generic arm64 kernels, fp16 and dot-product ones
#   a55  qemu cortex-a76, cpuinfo Cortex-A55: the A55-tuned kernels (qemu has no A55 model; the
#        A76 model has the same fp16 and dot-product instructions)
#   a53  qemu cortex-a53, cpuinfo Cortex-A53: no fp16 or dot-product instructions
#
# Each ARM run's log must name the part its profile gives (tract logs the part it detected); a
# qemu that writes its own cpuinfo fails that check instead of quietly running other kernels.
# Emulation checks what the kernels compute, not how fast: its times say nothing of a board's.
#
# Relative OUT, DATA, MODEL and MODEL_INT8 are read from the current folder. Each run's folder in
# OUT is emptied before the run; the scores cover every run folder in OUT, earlier ones included.
#
# Env: DATA (labelled folder), SLICES (first N slices by name; default all), MODEL, MODEL_INT8,
# RUNS (run names, default all below), ARM_TARGET_DIR (cargo's target folder for the aarch64
# build; default the x86 one).
set -euo pipefail

usage="usage: bench/arm.sh OUT [LANES]"
absolute() { if [[ $1 == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
out=$(absolute "${1:?$usage}")
lanes=${2:-2}
if [[ ! $lanes =~ ^[1-9][0-9]*$ ]]; then
  echo "LANES '$lanes' is not a whole number of at least 1" >&2
  exit 2
fi
data=$(absolute "${DATA:-}")
model=$(absolute "${MODEL:-}")
model_int8=$(absolute "${MODEL_INT8:-}")
cd "$(dirname "$0")/.."
# Defaults, relative to the repository.
[[ -n ${DATA:-} ]] || data=$PWD/../shared/data/medseg/infnet_medseg100
[[ -n ${MODEL:-} ]] || model=$PWD/models/tvunet-medseg-anchored.onnx
[[ -n ${MODEL_INT8:-} ]] || model_int8=$PWD/models/tvunet-medseg-anchored.int8.onnx
target=aarch64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
arm_target_dir=${ARM_TARGET_DIR:-$target_dir}

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc

# name: where it runs, engine, model file.
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
# The part number tract must report for each profile.
declare -A part=([a76]=0xd0b [a55]=0xd05 [a53]=0xd03)
# Slowest first under emulation (f16, then int8, then fp32), so the lanes finish together.
all_runs="a76-f16 a55-f16 a76-int8 a55-int8 a53-int8 a76-fp32 a55-fp32 a53-fp32 x86-fp32 x86-int8"
read -r -a runs <<<"${RUNS:-$all_runs}"

fail() { echo "bench/arm.sh: $*" >&2; exit 2; }
((${#runs[@]} > 0)) || fail "RUNS names no run"
arm=false
x86=false
for name in "${runs[@]}"; do
  [[ -n ${spec[$name]:-} ]] || fail "unknown run '$name' (runs: $all_runs)"
  if [[ $name == x86-* ]]; then x86=true; else arm=true; fi
done
[[ -d $data/images && -d $data/masks_binary ]] ||
  fail "DATA $data has no images/ and masks_binary/ folders"
for name in "${runs[@]}"; do
  read -r _ _ file <<<"${spec[$name]}"
  [[ -f $file ]] || fail "run $name: no model file $file"
done
if $arm; then
  [[ $(id -u) == 0 ]] || fail "the ARM runs need root (a private mount namespace for /proc/cpuinfo)"
  for tool in qemu-aarch64 aarch64-linux-gnu-gcc unshare; do
    command -v "$tool" >/dev/null || fail "no $tool (Debian: qemu-user, gcc-aarch64-linux-gnu)"
  done
fi
mapfile -t slices < <(find "$data/images" -name '*.jpg' | sort -V | head -n "${SLICES:-100000}")
((${#slices[@]} > 0)) || fail "no .jpg slices in $data/images"

x86_bin=$target_dir/debug/tvunet-edge
arm_bin=$arm_target_dir/$target/debug/tvunet-edge
if $x86; then
  cargo build -p tvunet-device --bin tvunet-edge
fi
if $arm; then
  CARGO_TARGET_DIR=$arm_target_dir cargo build -p tvunet-device --bin tvunet-edge --target "$target"
fi

# qemu-aarch64 with CPU model $1 and $2 as /proc/cpuinfo, running the ARM binary.
emulate() {
  local cpu=$1 cpuinfo=$2
  shift 2
  unshare -m sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' sh "$cpuinfo" \
    qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$arm_bin" "$@"
}

# One run into $out/NAME, its log in $out/NAME.log; says how it ended.
one_run() {
  local name=$1 core engine file status=0
  read -r core engine file <<<"${spec[$name]}"
  rm -rf "${out:?}/$name"
  local args=(infer --engine "$engine" --model "$file" --out "$out/$name" "${slices[@]}")
  local started=$SECONDS
  # tract's debug lines name the instruction sets and kernel families it chose.
  export RUST_LOG=info,tract_linalg=debug
  case $core in
    x86) "$x86_bin" "${args[@]}" ;;
    a53) emulate cortex-a53 bench/arm/cortex-a53.cpuinfo "${args[@]}" ;;
    a55) emulate cortex-a76 bench/arm/cortex-a55.cpuinfo "${args[@]}" ;;
    a76) emulate cortex-a76 bench/arm/cortex-a76.cpuinfo "${args[@]}" ;;
  esac >"$out/$name.log" 2>&1 || status=$?
  if ((status != 0)); then
    echo "$name: FAILED (exit $status), see $out/$name.log"
    return 1
  fi
  if [[ $core != x86 ]] && ! grep -q "CPU part auto detected: ${part[$core]}" "$out/$name.log"; then
    echo "$name: FAILED, tract did not detect part ${part[$core]} (the cpuinfo did not reach it)"
    return 1
  fi
  echo "$name: $((SECONDS - started)) s, ${#slices[@]} slices"
}

mkdir -p "$out"
for name in "${runs[@]}"; do
  while (($(jobs -rp | wc -l) >= lanes)); do wait -n || true; done
  rm -f "$out/$name.ok"
  { one_run "$name" && touch "$out/$name.ok"; } &
done
wait
failed=0
for name in "${runs[@]}"; do
  [[ -f $out/$name.ok ]] || failed=$((failed + 1))
  rm -f "$out/$name.ok"
done
((failed == 0)) || { echo "bench/arm.sh: $failed run(s) failed; nothing scored" >&2; exit 1; }

python3 bench/arm_masks.py "$out" "$data" | tee "$out/summary.txt"
