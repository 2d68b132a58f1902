#!/bin/sh
# The browser tests (tests/deployments/http/test_playground.py) drive Debian's chromium
# through chromium-driver. As root (CI runs so on a clean Debian machine) install
# what is missing; elsewhere say what to install. Never fails: without a browser
# only those tests skip, and pytest -ra prints why.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "browser tests: installing$missing"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; then
    exit 0
  fi
  echo "browser tests: could not install$missing; they will be skipped" >&2
else
  echo "browser tests will be skipped: install$missing (as root: apt-get install -y$missing)" >&2
fi
exit 0
