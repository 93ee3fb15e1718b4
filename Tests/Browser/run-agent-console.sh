#!/usr/bin/env bash
# Runs Tests/Browser/agent_console.py (the agent console in headless Chromium)
# with a Python that has Selenium. Deploy/local/install-deps.sh installs
# Debian's python3-selenium, chromium and chromium-driver; their modules are
# importable by Debian's /usr/bin/python3 only, not by a pyenv python3 on PATH.
# VEIL_BROWSER_PYTHON overrides the choice.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for py in ${VEIL_BROWSER_PYTHON:-} /usr/bin/python3 python3; do
  if "$py" -c 'import selenium' 2>/dev/null; then
    exec "$py" "$here/agent_console.py" "$@"
  fi
done
echo "error: no python3 with Selenium; run Deploy/local/install-deps.sh (installs python3-selenium)" >&2
exit 4
