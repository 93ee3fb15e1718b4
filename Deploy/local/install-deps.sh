#!/usr/bin/env bash
# Installs what Veil needs on a fresh Debian machine, only what is missing.
set -euo pipefail
need=()
pkg-config --exists rdkafka 2>/dev/null || need+=(librdkafka-dev)
[ -e /usr/include/postgresql/libpq-fe.h ] || need+=(libpq-dev)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v kcat >/dev/null || need+=(kcat)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v curl >/dev/null || need+=(curl)
# Stacks of a test run that hangs (Deploy/local/watch-tests.py prints them before ending it).
command -v gdb >/dev/null || need+=(gdb)
python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml || need+=(python3-yaml)
python3 -c 'import jsonschema' 2>/dev/null || pip install -q jsonschema || need+=(python3-jsonschema)
# Real-browser test of the agent console (Tests/Browser): Debian's Chromium, its
# driver and Selenium for Debian's own python3 (the pyenv python3 on PATH can't
# import apt's modules; Tests/Browser/run-agent-console.sh uses /usr/bin/python3).
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
/usr/bin/python3 -c 'import selenium' 2>/dev/null || need+=(python3-selenium)
command -v kubectl >/dev/null || echo "note: kubectl not found; the Kubernetes manifest checks need it (kubectl kustomize)" >&2
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "==> installing: ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing packages (${need[*]}); run as root or: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "==> installed"
