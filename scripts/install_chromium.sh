#!/usr/bin/env bash
# Install Debian's chromium for the browser tests of the sandbox pages, and a CJK font so the Chinese
# (and the emoji) in the tour's screenshots (docs/images/) are text, not boxes (root, or sudo when available).
# Exits at once when both are there.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v fc-list >/dev/null 2>&1 || [[ -z "$(fc-list :lang=zh 2>/dev/null)" ]]; then
  missing+=(fonts-noto-cjk)
fi
if ! fc-list 2>/dev/null | grep -qi "Noto Color Emoji"; then
  missing+=(fonts-noto-color-emoji)  # the bot's 🎉 and friends
fi
if [[ ${#missing[@]} -eq 0 ]]; then exit 0; fi
SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
chromium --version
fc-list :lang=zh family | sort -u | head -n 1
