#!/usr/bin/env bash
# Pack what benchmarks/gpu_checks.sh needs beyond a stock PyTorch image, for a GPU machine with no network:
# DEST/comfyui (the ComfyUI source, without its tests, web assets and API nodes) and DEST/wheels (the
# packages such an image lacks, for the GPU machine's Python).
#
#   bash benchmarks/bundle_offline.sh COMFYUI_DIR DEST [PACKAGE==VERSION ...]
#
# PY_VERSION: the GPU machine's Python (default 3.12). Default packages: ComfyUI's comfy-aimdo (imported by
# comfy.model_management) and the trainer's diffusers + importlib_metadata, plus transformers at the
# version the tests use, so the trainer runs on the versions it was tested with.
set -euo pipefail
src=$1 dest=$2
shift 2
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(comfy-aimdo==0.6.0 diffusers==0.42.1 importlib_metadata==10.2.0 transformers==5.24.0)
mkdir -p "$dest/comfyui" "$dest/wheels"
tar -C "$src" --exclude=__pycache__ --exclude=.git --exclude=./tests --exclude=./tests-unit \
    --exclude=./comfy_api_nodes --exclude=./web --exclude=./input --exclude=./output -cf - . | tar -C "$dest/comfyui" -xf -
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest/wheels" "${packages[@]}"
du -sh "$dest/comfyui" "$dest/wheels"
