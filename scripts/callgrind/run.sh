#!/bin/bash
# Instructions per allowed call under callgrind: run.sh BIN NAME CALLS PORT (the debug CLI and
# the test venv from scripts/install-test-deps.sh must exist); then
# callgrind_annotate --inclusive=yes $CG_DIR/NAME/cg.out.1 | grep "PROGRAM TOTALS"
# usage: run.sh BIN NAME N
set -e
BIN=$1; NAME=$2; N=$3; PORT=$4
CLI="$(dirname "$0")/../../target/debug/custos"
D=${CG_DIR:-/tmp/custos-callgrind}/$NAME; rm -rf $D; mkdir -p $D
valgrind --tool=callgrind --callgrind-out-file=$D/cg.out $BIN serve --dev --listen 127.0.0.1:$PORT --data-dir $D/data > $D/log 2>&1 &
VPID=$!
for i in $(seq 1 120); do grep -q "custos listening" $D/log && break; sleep 1; done
export CUSTOS_ADDR=http://127.0.0.1:$PORT CUSTOS_TOKEN=$(cat $D/data/admin.token)
PUB=$($CLI agent keygen --out $D/agent.key --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["public_key"])')
IND=$(echo "$PUB" | sed 's/^/  /')
cat > $D/r.yaml <<Y
kind: Upstream
name: fx
command: [python3, $(cd "$(dirname "$0")/../.." && pwd)/crates/custos-cli/tests/fixtures/stdio_fixture.py]
tiers: { echo: 1 }
default_tier: 3
---
kind: Template
name: t
ttl: 30m
tools: [fx__echo]
---
kind: Agent
name: a
owner: x@example.com
archetype: automation
templates: [t]
public_key: |
$IND
Y
$CLI apply -f $D/r.yaml >/dev/null
TASK=$($CLI task start --agent a --template t --on-behalf-of alice@example.com --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["task_id"])')
TOK=$($CLI task token --task $TASK --agent-key $D/agent.key --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])')
"$(dirname "$0")/../../.cache/deps/venv/bin/python" "$(dirname "$0")/drive.py" http://127.0.0.1:$PORT/mcp $TOK 20
callgrind_control -z $VPID >/dev/null 2>&1 || true
"$(dirname "$0")/../../.cache/deps/venv/bin/python" "$(dirname "$0")/drive.py" http://127.0.0.1:$PORT/mcp $TOK $N
callgrind_control -d $VPID >/dev/null 2>&1 || true
kill -TERM $VPID; wait $VPID || true
ls $D
