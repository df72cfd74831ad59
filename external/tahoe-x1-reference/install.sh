#!/usr/bin/env bash
# Install the official tahoe-x1 1.0.0 package beside the project's venv, for the parity test only.
#
# tahoe-x1 cannot be a plain dependency on CPU: its pins pull flash-attn (a CUDA build) and torch<2.7.1.
# So the stack goes, without its pins, into a second venv (REF_VENV) that sees the project's venv
# through a .pth file: the project's packages (torch 2.13.0, transformers, …) are shared and the
# reference-only ones (tahoe-x1, llm-foundry, composer, CUDA-linked torchvision, mlflow) stay out of
# the product's environment, where torchvision would break `import sae_lens`.
#
# usage: install.sh PROJECT_VENV REF_VENV
set -euo pipefail
project_venv=$(cd "$1" && pwd)
ref_venv=$2
here=$(cd "$(dirname "$0")" && pwd)

python_version=$("$project_venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
test -x "$ref_venv/bin/python" || "$project_venv/bin/python" -m venv --without-pip "$ref_venv"
ref_site=$("$ref_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
project_site=$("$project_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$project_site" > "$ref_site/_sae_genomics_project.pth"

pip=("$project_venv/bin/python" -m pip --python "$ref_venv/bin/python")
# 1. the stack itself, without its (CUDA) pins
"${pip[@]}" install --quiet --no-deps --constraint "$here/reference.lock" \
  tahoe-x1 llm-foundry mosaicml mosaicml-streaming mosaicml-cli torchvision mlflow
# 2. what importing it needs, resolved against the project's packages (already visible via the .pth)
"${pip[@]}" install --quiet --constraint "$here/reference.lock" --constraint "$here/../../requirements.lock" \
  -r "$here/import-requirements.txt"
echo "reference stack installed in $ref_venv (python $python_version)"
