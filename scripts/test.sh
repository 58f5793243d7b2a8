#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole pyvirtio test suite, real-peer tests included.
# Fails on any failure, and also when pytest collects no test at all (its exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYVIRTIO_HYPOTHESIS_EXAMPLES=${PYVIRTIO_HYPOTHESIS_EXAMPLES:-2000}
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q --durations=15 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
