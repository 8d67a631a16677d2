#!/bin/sh
# The browser tests drive Debian's Chromium through Playwright (no browser download from the
# internet). Install it when it is missing and we may; otherwise say what to do.
set -e
for candidate in "$PIPELINE_CHROMIUM" /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then exit 0; fi
done
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests (apt-get)..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "Chromium is missing: install Debian's 'chromium' package (or set PIPELINE_CHROMIUM=/path/to/chromium);" >&2
echo "the browser tests are skipped without it." >&2
exit 0
