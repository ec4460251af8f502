#!/usr/bin/env bash
# Debian packages the view tests need, installed only when missing (CI starts clean):
#   chromium   - the headless browser of the web-page test (tests/view/test_web_page.py)
#   prometheus - for promtool, which tests the chart's alert rules (tests/view/test_alerts.py)
# Nothing is downloaded but Debian packages; no service is started here.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root: apt-get install ${need[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
apt-get update -qq
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
echo "view tools installed (${need[*]}) in $(( $(date +%s) - start )) s"
