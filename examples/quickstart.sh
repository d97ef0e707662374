#!/usr/bin/env bash
# The README quickstart, non-interactively, against a fresh data directory:
#   1. start Custos (embedded SQLite, generated keys, admin token)
#   2. generate the agent's key and apply examples/quickstart.yaml
#   3. start a task and exchange the agent's key for a task token
#   4. speak MCP to the gateway: list tools, call an allowed one, be refused the others
#   5. trace the task in the audit log and verify the chain
# Exits non-zero if any step does not behave as documented.
#
# Env: CUSTOS_BIN (default: target/release/custos, built with `cargo build --release` if missing),
#      CUSTOS_QUICKSTART_DIR (default: a new temporary directory, removed at the end).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [[ -z "${CUSTOS_BIN:-}" ]]; then
  CUSTOS_BIN="$REPO/target/release/custos"
  [[ -x "$CUSTOS_BIN" ]] || cargo build --release --locked --bin custos >&2
fi
WORK="${CUSTOS_QUICKSTART_DIR:-$(mktemp -d)}"
mkdir -p "$WORK"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  [[ -n "${CUSTOS_QUICKSTART_DIR:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'quickstart FAILED: %s\n' "$*" >&2; exit 1; }
custos() { "$CUSTOS_BIN" "$@"; }

step "1. custos serve --dev (data in $WORK/data)"
"$CUSTOS_BIN" serve --dev --data-dir "$WORK/data" --listen "${CUSTOS_LISTEN:-127.0.0.1:0}" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  grep -q '^custos listening on ' "$WORK/server.log" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; fail "server exited"; }
  sleep 0.1
done
ADDR="$(sed -n 's/^custos listening on \([^ ]*\).*/\1/p' "$WORK/server.log" | head -n1)"
[[ -n "$ADDR" ]] || fail "server did not start"
export CUSTOS_ADDR="$ADDR"
export CUSTOS_TOKEN="$(cat "$WORK/data/admin.token")"
echo "listening on $CUSTOS_ADDR; admin token in $WORK/data/admin.token"

step "2. custos agent keygen; custos apply -f examples/quickstart.yaml"
cp examples/quickstart.yaml "$WORK/quickstart.yaml"
custos agent keygen --out "$WORK/agent.key" > "$WORK/agent.pub"
custos apply -f "$WORK/quickstart.yaml"
custos get agents

step "3. custos task start; custos task token"
TASK="$(custos task start --agent agent-docs-review-dev --template docs-review \
  --on-behalf-of alice@example.com --purpose "review the release checklist" --ttl 10m --json \
  | sed -n 's/.*"task_id": *"\([^"]*\)".*/\1/p')"
[[ -n "$TASK" ]] || fail "no task id"
echo "task: $TASK"
TOKEN="$(custos task token --task "$TASK" --agent-key "$WORK/agent.key")"
[[ "$TOKEN" == ey* ]] || fail "no task token"
echo "task token: ${TOKEN:0:24}… (EdDSA JWT, 15 minutes at most)"

step "4. MCP over Streamable HTTP at $CUSTOS_ADDR/mcp"
mcp() { # mcp JSON [extra curl args...]
  local body="$1"; shift
  curl -sS -X POST "$CUSTOS_ADDR/mcp" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' "$@" -d "$body"
}
SESSION="$(mcp '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"quickstart","version":"1"}}}' -D - -o /dev/null \
  | tr -d '\r' | sed -n 's/^mcp-session-id: //Ip')"
[[ -n "$SESSION" ]] || fail "no MCP session"
S=(-H "mcp-session-id: $SESSION" -H 'mcp-protocol-version: 2025-11-25')
mcp '{"jsonrpc":"2.0","method":"notifications/initialized"}' "${S[@]}" >/dev/null
TOOLS="$(mcp '{"jsonrpc":"2.0","id":2,"method":"tools/list"}' "${S[@]}")"
NAMES="$(grep -o '"name":"files__[a-z_]*"' <<<"$TOOLS" | sort | tr '\n' ' ')"
echo "tools/list: $NAMES"
grep -q 'files__read_text_file' <<<"$NAMES" || fail "read_text_file not listed"
grep -q 'files__move_file' <<<"$NAMES" && fail "a Tier 4 tool was listed"
grep -q 'files__read_file"' <<<"$NAMES" && fail "a tool outside the template was listed"

READ="$(mcp '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"files__read_text_file","arguments":{"path":"checklist.md"}}}' "${S[@]}")"
echo "allowed call  files__read_text_file -> $READ"
grep -q 'Tag the release' <<<"$READ" || fail "the allowed call did not return the file"
for tool in files__read_file files__write_file files__move_file; do
  OUT="$(mcp "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"$tool\",\"arguments\":{\"path\":\"checklist.md\",\"content\":\"x\",\"source\":\"a\",\"destination\":\"b\"}}}" "${S[@]}")"
  echo "refused call  $tool -> $OUT"
  grep -q '"error"' <<<"$OUT" || fail "$tool was not refused"
done

step "5. custos audit trace $TASK; custos audit verify"
custos audit trace "$TASK"
custos audit verify
custos task end "$TASK"
echo
echo "quickstart OK"
