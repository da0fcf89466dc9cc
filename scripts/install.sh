#!/usr/bin/env bash
# Install fairseq-bso and its fairseq build without letting pip choose torch.
#   bash scripts/install.sh          # the plugin
#   bash scripts/install.sh test     # the plugin + test extra
# torch is pinned first (a CPU build on this machine kind); fairseq builds its
# C++/Cython extensions against that torch (--no-build-isolation), so pip never
# pulls a CUDA torch into a build environment. pip caches the fairseq wheel, so
# a second install takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${FAIRSEQ_BSO_TORCH:-torch==2.13.0}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

echo "[install] $TORCH_SPEC"
pip_install "$TORCH_SPEC"
if "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  FAIRSEQ_SPEC="fairseq-fixed==0.12.3.1"
else
  FAIRSEQ_SPEC="fairseq==0.12.2"
fi
# numpy < 2: fairseq's language-modeling datasets use np.compat, removed in numpy 2 (setup.cfg pins it too);
# Python >= 3.13 has no numpy 1.x wheels (see docs/bad_inputs.md, Known limitations)
NUMPY_SPEC="numpy<2"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info < (3, 13) else 1)'; then
  NUMPY_SPEC="numpy"
fi
if ! "$PY" -c 'import fairseq' 2>/dev/null; then
  echo "[install] $FAIRSEQ_SPEC (builds C++ extensions on first install: about 5 minutes)"
  pip_install "setuptools>=61" wheel cython "$NUMPY_SPEC"
  pip_install --no-build-isolation "$FAIRSEQ_SPEC" "$TORCH_SPEC"
fi
extra=""
if [ "${1:-}" = "test" ]; then extra="[test]"; fi
echo "[install] fairseq-bso$extra (editable)"
pip_install "$TORCH_SPEC" "$NUMPY_SPEC" -e ".$extra"
