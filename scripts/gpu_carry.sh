#!/usr/bin/env bash
# Prepare what one device call carries (see bench/gpu_session.sh): the GPU machine reaches no registry, and its image
# has torch and triton but not the rest of tunesmith's pinned stack.
#   .whl/  wheels of the pinned versions (constraints.txt) for the image's Python 3.12, no dependencies resolved
#   .gpu/  SmolLM2's tokenizer files (the embedded model's) and the Bitext CSV from ../shared/data
# Both folders are kept out of git through .git/info/exclude, so `run` may carry them.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude || echo "/.whl/" >> .git/info/exclude
grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
mkdir -p .whl .gpu
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --implementation cp -d .whl -c constraints.txt \
  transformers peft pydantic pydantic_core annotated-types typing-inspection datasketch ftfy wcwidth liger-kernel
.venv/bin/python - <<'PY'
from tunesmith.models.load import load_tokenizer, resolve

load_tokenizer(resolve("smollm2-135m-instruct").path).save_pretrained(".gpu/tok")
PY
cp ../shared/data/bitext_customer_support/Bitext_Sample_Customer_Support_Training_Dataset.csv .gpu/bitext.csv
du -sh .whl .gpu
