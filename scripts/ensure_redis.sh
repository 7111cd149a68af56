#!/usr/bin/env bash
# Start a local redis-server on 127.0.0.1:${REDIS_PORT:-6379} unless one already answers.
# Installs Debian's redis-server first when the binary is missing.
set -euo pipefail
port="${REDIS_PORT:-6379}"
if redis-cli -p "$port" ping >/dev/null 2>&1; then
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing Debian's package" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
dir="${TMPDIR:-/tmp}/powersampling-redis-$port"
mkdir -p "$dir"
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "$dir" --logfile "$dir/redis.log"
for _ in $(seq 1 50); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "redis-server did not answer on port $port; see $dir/redis.log" >&2
exit 1
