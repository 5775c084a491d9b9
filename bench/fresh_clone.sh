#!/usr/bin/env bash
# Fresh clone -> serving local stack: clones HEAD of this repository into a temporary
# directory and times `make dev` until the stack prints LOCAL_STACK_READY.
#   bash bench/fresh_clone.sh            # uv's download cache as it is (warm after one run)
#   bash bench/fresh_clone.sh --cold     # with an empty uv cache (everything downloaded)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill -- "-$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
if [ "${1:-}" = "--cold" ]; then export UV_CACHE_DIR="$work/uv-cache"; fi
git clone --quiet "$repo" "$work/clone"
cd "$work/clone"
start=$(date +%s.%N)
PORT=0 setsid make dev >"$work/out.log" 2>&1 &
pid=$!
until grep -q LOCAL_STACK_READY "$work/out.log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/out.log"; echo "make dev exited"; exit 1; }
  sleep 0.1
done
end=$(date +%s.%N)
printf 'fresh clone -> serving (%s uv cache): %.1f s\n' "$([ "${1:-}" = "--cold" ] && echo empty || echo current)" \
  "$(echo "$end - $start" | bc)"
kill -INT -- "-$pid"; wait "$pid" || true
