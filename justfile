# Everyday recipes. `just --list` shows them.

model := "models/tvunet-medseg-anchored.onnx"
data := "../shared/data/medseg/infnet_medseg100"
unlabelled := "../shared/data/unlabeled/images"

# Stream the bundled real slices to a device on loopback TCP and a pseudo-terminal.
demo:
    cargo run -p tvunet -- demo

# The test suite, as CI runs it.
test:
    cargo test --workspace --features tvunet-device/ort

# Train the default model's recipe (models/tvunet-medseg-anchored.md): the labelled slices with a
# mean teacher on the unlabelled ones; add --all-slices for the final model, --backend tch where
# tvunet was built with libtorch.
train out="runs/medseg" *args="":
    cargo run --release -p tvunet -- train --data {{data}} --out {{out}} --epochs 200 --schedule cosine --batch-size 8 --lambda-tv 0 --lr 1e-3 --base 16 --separable --input-size 192 --normalisation tissue-anchored --unlabelled {{unlabelled}} {{args}}

# k-fold cross-validation of a training recipe, two folds side by side (see bench/cv.sh).
cv out="runs/cv" folds="5" *args="":
    cargo build --release -p tvunet
    bench/cv.sh {{out}} {{folds}} 2 -- {{args}}

# Export a run to ONNX (parity-checked against tract).
export run="runs/medseg" out="out/model.onnx":
    cargo run -p tvunet -- export --checkpoint {{run}} --out {{out}}

# Quantize a model to int8 for tract, calibrated on real unlabelled slices, checked on labelled ones.
quantize m=model out="models/my-model.int8.onnx":
    cargo run -p tvunet -- quantize --model {{m}} --calib {{unlabelled}} --out {{out}} --check {{data}}

# Device latency (tract) and the same file in onnxruntime.
bench m=model:
    cargo bench -p tvunet-device --bench latency -- {{justfile_directory()}}/{{m}}
    python3 bench/ort.py {{m}}

# Evaluate a model file through the device's inference code.
eval m=model dir=data out="out/eval":
    cargo run -p tvunet -- eval --model {{m}} --data {{dir}} --out {{out}}

# Serve the model on loopback TCP.
serve m=model addr="127.0.0.1:7878":
    cargo run -p tvunet-device --bin tvunet-edge -- serve --model {{m}} --tcp {{addr}}

# Check that the device builds for aarch64 Linux. tract's assembly kernels need a C cross
# compiler (Debian: apt install gcc-aarch64-linux-gnu).
cross:
    rustup target add aarch64-unknown-linux-gnu
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        cargo check -p tvunet-device --all-targets --target aarch64-unknown-linux-gnu

# The device's masks on emulated ARM cores (Cortex-A76, A55, A53 kernels; fp32, int8, f16) against
# x86 and the radiologist's masks, on the labelled slices. Needs root, qemu-user and the cross
# compiler (bench/arm.sh). Correctness only: emulation says nothing about a board's speed.
arm out="out/arm" lanes="2":
    rustup target add aarch64-unknown-linux-gnu
    bench/arm.sh {{out}} {{lanes}}

# Formatting and lints as CI wants them.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
