#!/usr/bin/env bash
# Start the real services that the integration tests use. Filled in as they are needed.
set -euo pipefail
