#!/usr/bin/env bash
# The wheels benchmarks/gpu_suite.py needs on the lent H200 machine beyond what it has
# (torch, torchvision, transformers, Accelerate, safetensors, rich, typer, PyYAML are
# there; pydantic is not) plus Liger-Kernel for its comparison row. Run here, in the
# repository root; .whl/ is ignored by git and travels with `carry`.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
for spec in pydantic pydantic-core annotated-types typing-inspection typing-extensions liger-kernel; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$spec"
done
ls -la .whl
