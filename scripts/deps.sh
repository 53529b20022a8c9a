#!/usr/bin/env bash
# Installs what ChatBroker needs to build and test, only when missing: liblz4-dev and libsqlite3-dev (apt),
# and the Python test clients (pip). Sourced by scripts/serve and scripts/test.
set -euo pipefail

install_apt() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]} (apt-get)" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_pip() {
    if ! python3 -c 'import socketio, engineio, jwt, requests, pytest, websocket, prometheus_client, aiohttp, selenium' >/dev/null 2>&1 \
        || ! command -v schemathesis >/dev/null 2>&1; then
        echo "installing the Python test clients (pip)" >&2
        python3 -m pip install -q "python-socketio[client]>=5,<6" "PyJWT>=2" requests pytest websocket-client prometheus-client \
            "schemathesis>=4,<5" "aiohttp>=3.9,<4" "selenium>=4.10,<5"
    fi
}
