#!/usr/bin/env bash
# Debian packages the tests need: Chromium (browser test, driven by playwright through
# executable_path), zbar (decodes the QR from a screenshot), libmagic1 (neonize).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -e /usr/lib/x86_64-linux-gnu/libzbar.so.0 ] || [ -e /usr/lib/aarch64-linux-gnu/libzbar.so.0 ] \
  || ls /usr/lib/*/libzbar.so.0 >/dev/null 2>&1 || missing+=(libzbar0)
command -v zbarimg >/dev/null 2>&1 || missing+=(zbar-tools)
ls /usr/lib/*/libmagic.so.1 >/dev/null 2>&1 || missing+=(libmagic1)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
