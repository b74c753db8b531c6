#!/bin/bash
# Fuzz every parser of outside input for longer than the suite does (tests/test_fuzz.py),
# with random inputs instead of the suite's fixed ones. No root needed.
#
#   scripts/fuzz.sh            # 20,000 examples per parser (6 min on 2 busy vCPUs)
#   scripts/fuzz.sh 2000       # a shorter run
#
# A failure prints the smallest input that fails; add it to the test as an @example.
set -euo pipefail
cd "$(dirname "$0")/.."
PCPU_FUZZ_EXAMPLES="${1:-20000}" exec .venv/bin/python -m pytest tests/test_fuzz.py -q \
    -p no:cacheprovider -x
