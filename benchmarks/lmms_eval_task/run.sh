#!/usr/bin/env bash
# lmms-eval's openai_compatible model scoring the synthetic task against `malmm serve`, offline.
#
#   bash benchmarks/lmms_eval_task/run.sh MODEL_FOLDER [OUT]      # from the repository root
#
# LMMS: the lmms-eval virtual environment (default /tmp/lmms; see docs/serve.md, "lmms-eval");
# MALMM: malmm's (default .venv). The server runs on a free loopback port with its feature cache in
# a temporary folder, and is stopped at the end. Network access is cut for lmms-eval (a dead proxy,
# the Hugging Face libraries offline): nothing but the local server is reached.
set -euo pipefail
model=${1:?usage: run.sh MODEL_FOLDER [OUT]}
out=${2:-/tmp/malmm-lmms-eval}
lmms=${LMMS:-/tmp/lmms}
malmm=${MALMM:-.venv}
task=benchmarks/lmms_eval_task

"$malmm/bin/python" "$task/make_clips.py"
port=$("$malmm/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
cache=$(mktemp -d)
MALMM_CACHE_DIR=$cache "$malmm/bin/malmm" serve --model "$model" --device cpu --port "$port" \
    --allow-dir "$task/data" --quiet &
server=$!
stop() {
    local status=$?
    kill $server 2>/dev/null || true
    wait $server 2>/dev/null || true
    rm -rf "$cache"
    exit $status
}
trap stop EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
    kill -0 $server 2>/dev/null || { echo "malmm serve did not start" >&2; exit 1; }
    sleep 0.5
done

HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
NO_PROXY=127.0.0.1,localhost "$lmms/bin/lmms-eval" eval --model openai_compatible \
    --model_args "model=malmm,base_url=http://127.0.0.1:$port/v1,api_key=none,pass_video_url=True,num_concurrent=2,max_retries=1" \
    --tasks malmm_synthetic --include_path "$task" --batch_size 1 --output_path "$out" --log_samples
