#!/usr/bin/env bash
# Debian packages tunesmith uses besides Python ones:
#   wordnet-base, wordnet-sense-index  WordNet 3.0 for METEOR's synonym stage, offline (no NLTK download)
#   chromium                           headless rendering check of report.html in the tests
#   gcc                                builds the fused CPU training kernels (train/cpu_kernels.c) on first use
# Installed only when missing and when we may (root with apt-get); otherwise say what is missing and go on:
# METEOR then reports itself unavailable, the browser test skips, and CPU training uses PyTorch ops instead of
# the kernels (slower, same results).
set -uo pipefail
missing=()
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
[ -f /usr/share/wordnet/index.sense ] || missing+=(wordnet-sense-index)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || echo "warning: could not install ${missing[*]}; see the top of scripts/system-deps.sh for what goes without"
else
  echo "note: missing Debian packages ${missing[*]} (run: sudo apt-get install ${missing[*]});" \
       "see the top of scripts/system-deps.sh for what goes without"
fi
exit 0
