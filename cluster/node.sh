#!/usr/bin/env bash
# Start a SwiftInfer Serve cluster by hand on bare machines (same code, venv and
# model path on every machine; see docs/cluster.md).
#
#   cluster/node.sh head                 # on the head machine: GCS, dashboard, Serve controller; no GPUs offered
#   cluster/node.sh worker HEAD_IP       # on each GPU machine: offers its GPUs (and CPUs) to the cluster
#   cluster/node.sh deploy [CONFIG]      # on the head: serve deploy CONFIG (default cluster/serve-gpu.yaml), wait until RUNNING
#   cluster/node.sh status               # nodes and resources, then Serve application status
#   cluster/node.sh stop                 # on any machine: stop the Ray processes of this machine
#
# Environment (all optional):
#   RAY_PORT=6379 DASHBOARD_PORT=8265   ports of the head
#   DASHBOARD_HOST=127.0.0.1             the dashboard (job and Serve REST API) stays on loopback; `deploy` runs on the head.
#                                        Open it wider only behind a firewall, with RAY_AUTH_TOKEN set
#   HEAD_CPUS=N                          CPUs the head offers (default: all)
#   WORKER_RESOURCES='{"llm_slot": 1}'   custom resources of a worker (pair with replica_resources in the Serve config)
#   RAY_AUTH_TOKEN=...                   token authentication: generate once with `ray get-auth-token --generate`
#                                        on the head, export the same value on every machine and client
#   DEPLOY_TIMEOUT_S=1800                how long `deploy` waits for the application to run
#   HAPROXY=1                            Serve's HAProxy ingress in place of its Python proxy (README "HAProxy in front");
#                                        the same value on every machine, before `head` / `worker`
#   FRONT=direct                         HAProxy plus Serve's direct ingress, for an app with `http_front: direct` (README
#                                        "Each replica serves its own streams"; not yet run on more than one machine)
set -euo pipefail

RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
DEPLOY_TIMEOUT_S="${DEPLOY_TIMEOUT_S:-1800}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
# Serve decodes a few header values as UTF-8 before the app runs (a 500 otherwise); in every proxy and,
# behind HAProxy, every ingress replica's HTTP server this guard answers 400 (deployments/http/proxy_guard.py)
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="${RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH:-deployments.http.proxy_guard:proxy_middlewares}"
if [[ "${HAPROXY:-0}" == 1 || "${FRONT:-ingress}" == direct ]]; then
  export RAY_SERVE_ENABLE_HA_PROXY=1
fi
if [[ "${FRONT:-ingress}" == direct ]]; then
  export RAY_SERVE_ENABLE_DIRECT_INGRESS=1
  # the route picker also reads a body's session_id (bodies up to 64 KiB; longer ones are forwarded one hop)
  export RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1 RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE=65536
fi
if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
  export RAY_AUTH_MODE=token
fi
cd "$(dirname "$0")/.."

usage() { sed -n '2,23p' "$0"; exit 2; }

cmd="${1:-}"
shift || true
case "$cmd" in
  head)
    ray start --head --port="$RAY_PORT" --dashboard-host="${DASHBOARD_HOST:-127.0.0.1}" --dashboard-port="$DASHBOARD_PORT" \
      --num-gpus=0 ${HEAD_CPUS:+--num-cpus="$HEAD_CPUS"}
    ;;
  worker)
    [[ $# -ge 1 ]] || usage
    ray start --address="$1:$RAY_PORT" ${WORKER_RESOURCES:+--resources="$WORKER_RESOURCES"}
    ;;
  deploy)
    config="${1:-cluster/serve-gpu.yaml}"
    python cluster/validate.py "$config"
    serve deploy "$config" --address "http://127.0.0.1:$DASHBOARD_PORT"
    deadline=$((SECONDS + DEPLOY_TIMEOUT_S))
    until serve status --address "http://127.0.0.1:$DASHBOARD_PORT" | grep -q "status: RUNNING"; do
      if (( SECONDS > deadline )); then
        serve status --address "http://127.0.0.1:$DASHBOARD_PORT"
        echo "application not RUNNING after ${DEPLOY_TIMEOUT_S}s" >&2
        exit 1
      fi
      sleep 5
    done
    serve status --address "http://127.0.0.1:$DASHBOARD_PORT"
    ;;
  status)
    ray status --address="127.0.0.1:$RAY_PORT"
    serve status --address "http://127.0.0.1:$DASHBOARD_PORT"
    ;;
  stop)
    ray stop
    ;;
  *)
    usage
    ;;
esac
