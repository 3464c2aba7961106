#!/usr/bin/env bash
# Starts one service of docker-compose.yml in its container (docs/DEPLOY.md):
#   srtc-start server|worker|janus|coturn [more arguments for the program]
# The configurations come from the repository, mounted read-only at /srtc/deploy; the copies a service
# changes (the secret, the machine's paths) go to /run/srtc, a tmpfs in docker-compose.yml.
set -euo pipefail
role=${1:?usage: srtc-start server|worker|janus|coturn [arguments]}
shift
deploy=${SRTC_DEPLOY:-/srtc/deploy}  # the tests point these two elsewhere
run=${SRTC_RUN:-/run/srtc}
mkdir -p "$run"

case "$role" in
server)
  args=(--host "${SRTC_HOST:-127.0.0.1}" --port "${SRTC_PORT:-8080}")
  if [ -n "${SRTC_TURN_SECRET:-}" ]; then
    if [ -n "${SRTC_TURN_HOST:-}" ]; then
      # The coturn service of this stack, on the address clients reach it at (the server reads the secret
      # from SRTC_TURN_SECRET itself: never on the command line).
      args+=(--turn-url "turn:$SRTC_TURN_HOST:3478?transport=udp" --turn-url "turn:$SRTC_TURN_HOST:3478?transport=tcp"
        --stun-url "stun:$SRTC_TURN_HOST:3478")
    else
      echo "srtc-start: SRTC_TURN_SECRET is set but SRTC_TURN_HOST is not: the server hands out no TURN server" >&2
      unset SRTC_TURN_SECRET
    fi
  fi
  exec python -m server "${args[@]}" "$@"
  ;;
worker)
  # Workers share the host's network: each takes the first free stats port from 8090 (its log says which)
  # unless given --port. Replicas starting together may pick the same one; the loser exits before it joins
  # the room and its restart takes the next.
  case " $* " in
  *" --port "* | *" --port="*) ;;
  *)
    port=$(python - <<'PY'
import socket

for port in range(8090, 8190):
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            continue
    print(port)
    break
else:
    print(0)  # none free: no stats listener
PY
)
    set -- "$@" --port "$port"
    ;;
  esac
  exec python -m server.worker "$@"
  ;;
janus)
  # deploy/janus names Debian's x86-64 plugin folders; point them at this image's (the same on x86-64).
  lib=$(dirname "$(ls -d /usr/lib/*/janus/plugins | head -n 1)")
  mkdir -p "$run/janus"
  cp "$deploy"/janus/*.jcfg "$run/janus/"
  sed -i "s#/usr/lib/x86_64-linux-gnu/janus#$lib#" "$run/janus/janus.jcfg"
  exec janus -F "$run/janus" -o "$@"
  ;;
coturn)
  # deploy/turnserver.conf with the secret from SRTC_TURN_SECRET in place of its placeholder, written to the
  # tmpfs readable by root only, and the log to stdout (docker logs) instead of syslog.
  secret=${SRTC_TURN_SECRET:-}
  if [ ${#secret} -lt 16 ] || [[ "$secret" == REPLACE-ME* ]] || [[ "$secret" =~ [[:space:]] ]]; then
    echo "srtc-start: set SRTC_TURN_SECRET to 16+ random characters without spaces (openssl rand -hex 32)" >&2
    exit 2
  fi
  umask 077
  awk '/^static-auth-secret=/ { print "static-auth-secret=" ENVIRON["SRTC_TURN_SECRET"]; next }
       /^syslog$/ { print "log-file=stdout"; next }
       { print }' "$deploy/turnserver.conf" >"$run/turnserver.conf"
  exec turnserver -c "$run/turnserver.conf" "$@"
  ;;
*)
  echo "srtc-start: unknown service $role (server, worker, janus or coturn)" >&2
  exit 2
  ;;
esac
