#!/bin/sh
# Spark needs Java 17+. Install Debian's headless JRE when it is missing and we may (root, apt);
# otherwise say so: the pipeline then enriches in one process, and says what to install for Spark.
set -e
java_ok() {
    java=java  # as the pipeline looks for it: $JAVA_HOME/bin/java if it exists, else java on PATH
    if [ -n "$JAVA_HOME" ] && [ -x "$JAVA_HOME/bin/java" ]; then java="$JAVA_HOME/bin/java"; fi
    command -v "$java" >/dev/null 2>&1 || return 1
    major=$("$java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\.\{0,1\}\([0-9]*\).*/\1 \2/p' | head -1)
    set -- $major
    [ "${1:-0}" = "1" ] && set -- "${2:-0}"
    [ "${1:-0}" -ge 17 ]
}
if java_ok; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's default-jre-headless for Spark (apt-get)..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null
    exit 0
fi
echo "Java 17+ is missing: install it for Spark (Debian/Ubuntu: apt-get install openjdk-17-jre-headless," >&2
echo "or set JAVA_HOME); until then the pipeline enriches in one process." >&2
exit 0
