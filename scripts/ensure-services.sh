#!/usr/bin/env bash
# Start the local Redis and PostgreSQL the test suite talks to, if they are not running.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 6379; then
  if command -v redis-server >/dev/null; then
    echo "starting Redis on 127.0.0.1:6379"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/digest-redis.log
  else
    echo "Redis is not running on 127.0.0.1:6379 and redis-server is not installed" >&2
    exit 1
  fi
fi

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    echo "starting PostgreSQL on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  else
    echo "PostgreSQL is not running on 127.0.0.1:5432 and no cluster is installed" >&2
    exit 1
  fi
fi

for i in $(seq 1 30); do
  port_open 6379 && port_open 5432 && exit 0
  sleep 1
done
echo "Redis or PostgreSQL did not come up within 30 s" >&2
exit 1
