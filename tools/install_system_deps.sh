#!/usr/bin/env bash
# Installs the Debian packages codectts needs (espeak-ng for phonemizer, sox, libsndfile)
# only when missing. As root it runs apt-get; otherwise it prints the line to run and fails.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "ERROR: missing system packages: ${missing[*]}" >&2
  echo "Run:  sudo apt-get install -y ${missing[*]}   (then re-run make)" >&2
  exit 1
fi
