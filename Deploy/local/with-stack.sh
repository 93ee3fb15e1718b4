#!/usr/bin/env bash
# Runs a command with the embedded stack up (see stack.sh), and stops it afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/stack.sh" up
trap '"$here/stack.sh" down' EXIT
eval "$("$here/stack.sh" env)"
"$@"
