#!/bin/sh
# The IMAP tests run a real IMAP server: Debian's Dovecot, started by the tests on a free port
# with their own configuration. Install it when it is missing and we may; otherwise say what to do.
set -e
if [ -x /usr/sbin/dovecot ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's dovecot-imapd for the IMAP tests (apt-get)..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null
    exit 0
fi
echo "Dovecot is missing: install Debian's 'dovecot-imapd' package; the IMAP tests are skipped without it." >&2
exit 0
