#!/usr/bin/env bash
# C-STORE ingest rate: dicomnode (fsync per instance) against DCMTK storescp, same 500
# instances, same run, both on loopback with TCP_NODELAY=1 for the DCMTK tools.
#   bench/ingest.sh [COUNT] [SENDERS]
# SENDERS (default 1) storescu processes send disjoint shares at once, as a router with
# several associations does.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-500}
SENDERS=${2:-1}
PY=.venv/bin/python
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
export TCP_NODELAY=1

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
send() { # port called-aet -> seconds for all senders together
  local start end pids=()
  start=$(date +%s.%N)
  for share in "$WORK"/in/share*; do
    /usr/bin/storescu -aet BENCH -aec "$2" +sd +r +sp '*.dcm' 127.0.0.1 "$1" "$share" \
      >/dev/null &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  end=$(date +%s.%N)
  $PY -c "print($end - $start)"
}

$PY bench/make_instances.py "$WORK/in" --count "$COUNT" >/dev/null
BYTES=$(du -sb "$WORK/in" | cut -f1)
# Deal the files into SENDERS shares, round robin.
for i in $(seq 0 $((SENDERS - 1))); do mkdir -p "$WORK/in/share$i"; done
i=0
for f in "$WORK"/in/*.dcm; do mv "$f" "$WORK/in/share$((i % SENDERS))/"; i=$((i + 1)); done

# DCMTK storescp into a folder (its default: no fsync).
P1=$(free_port); mkdir -p "$WORK/scp"
/usr/bin/storescp -aet STORESCP -od "$WORK/scp" "$P1" >/dev/null 2>&1 &
wait_port "$P1"
T_SCP=$(send "$P1" STORESCP)
kill %1; wait %1 2>/dev/null || true

# dicomnode: no rules, so only receiving is measured (write, flush, fsync, rename, index).
P2=$(free_port); H2=$(free_port)
cat > "$WORK/node.toml" <<TOML
[node]
ae_title = "DICOMNODE"
host = "127.0.0.1"
port = $P2
storage_dir = "$WORK/var"
min_free_disk_mb = 100
series_idle_seconds = 3600
[http]
port = $H2
TOML
.venv/bin/dicomnode serve --config "$WORK/node.toml" >"$WORK/node.log" 2>&1 &
wait_port "$P2"
T_NODE=$(send "$P2" DICOMNODE)
STORED=$(.venv/bin/dicomnode status --json --config "$WORK/node.toml" | $PY -c 'import json,sys; print(json.load(sys.stdin)["instances"])')
kill -TERM %1; wait %1 2>/dev/null || true

$PY - "$COUNT" "$BYTES" "$T_SCP" "$T_NODE" "$STORED" "$SENDERS" <<'PYEOF'
import sys
count, size, t_scp, t_node, stored = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(f"instances: {count} ({size / count / 1024:.0f} KiB each), senders: {sys.argv[6]}; "
      f"node indexed {stored}")
print(f"storescp : {count / t_scp:7.1f} images/s  ({t_scp:.2f} s, no fsync)")
print(f"dicomnode: {count / t_node:7.1f} images/s  ({t_node:.2f} s, fsync + SQLite per instance)")
print(f"ratio dicomnode/storescp: {t_scp / t_node:.2f}")
PYEOF
