#!/usr/bin/env bash
# Start or stop a private Docker daemon for the image build and test, on machines without a
# running one (no systemd, CI). It has its own socket, data root and pid file under DIR, so it
# never touches another daemon; the default nofile limit is the hard limit this machine allows,
# since root cannot raise it here and runc fails to set a higher one.
#
#   scripts/docker_daemon.sh start DIR    # prints DOCKER_HOST=unix://DIR/docker.sock
#   scripts/docker_daemon.sh stop DIR
set -euo pipefail

action=${1:?usage: $0 start|stop DIR}
dir=${2:?usage: $0 start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
socket="unix://$dir/docker.sock"
pidfile="$dir/docker.pid"

case "$action" in
start)
    command -v dockerd > /dev/null || { echo "dockerd not found: apt-get install docker.io" >&2; exit 1; }
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2> /dev/null; then
        echo "DOCKER_HOST=$socket"
        exit 0
    fi
    hard=$(ulimit -Hn)
    [[ $hard == unlimited ]] && hard=1048576
    nohup dockerd --data-root "$dir/data" --exec-root "$dir/exec" --host "$socket" \
        --pidfile "$pidfile" --default-ulimit "nofile=$hard:$hard" \
        > "$dir/dockerd.log" 2>&1 &
    for _ in $(seq 60); do
        if DOCKER_HOST=$socket docker info > /dev/null 2>&1; then
            echo "DOCKER_HOST=$socket"
            exit 0
        fi
        sleep 1
    done
    echo "dockerd did not answer on $socket within 60 s; its log ($dir/dockerd.log):" >&2
    tail -n 20 "$dir/dockerd.log" >&2
    exit 1
    ;;
stop)
    if [[ -f $pidfile ]]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2> /dev/null || true
        for _ in $(seq 30); do
            kill -0 "$pid" 2> /dev/null || break
            sleep 1
        done
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
