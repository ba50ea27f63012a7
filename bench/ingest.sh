#!/usr/bin/env bash
# C-STORE ingest rate, one run, same instances, all on loopback (TCP_NODELAY=1 for DCMTK):
#   DCMTK storescp (writes files, no fsync)          1 and 4 associations
#   dicomnode serve (Success only once durable)      1 and 4 associations
#   Orthanc (SyncStorageArea: fsync-ed storage)      1 association
#   bench/ingest.sh [COUNT] [SENDERS...]     (default: 500 1 4)
# N associations = N storescu processes sending disjoint shares at once, as a router with
# several associations does. Each receiver starts on an empty folder for each measurement.
# Prints instances/s and the ratios the targets are stated in (docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COUNT=${1:-500}
shift || true
SENDERS=("${@:-1 4}")
read -r -a SENDERS <<<"${SENDERS[*]}"
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
# Every process this script starts is recorded in $STARTED (receivers start inside command
# substitutions, whose variables never reach this shell); on exit, however it comes, each one
# still running gets SIGTERM, up to 10 s, then SIGKILL. Nothing else is touched.
STARTED=$WORK/started.pids
: >"$STARTED"
started() { echo "$1" >>"$STARTED"; }
cleanup() {
  local pid
  trap - EXIT INT TERM
  if [ -f "$STARTED" ]; then
    while read -r pid; do [ -n "$pid" ] && stop "$pid" 100; done <"$STARTED"
  fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export TCP_NODELAY=1

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
now() { date +%s.%N; }
stop() { # pid [tenths of a second, 600]: SIGTERM, that long to finish, then SIGKILL
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 "${2:-600}"); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

deal() { # N -> folder with N shares of the instances, round robin
  local n=$1 dir="$WORK/in$1" i=0
  [ -d "$dir" ] && { echo "$dir"; return; }
  for s in $(seq 0 $((n - 1))); do mkdir -p "$dir/share$s"; done
  for f in "$WORK"/src/*.dcm; do ln "$f" "$dir/share$((i % n))/"; i=$((i + 1)); done
  echo "$dir"
}

send() { # port called-aet shares-folder -> seconds for all senders together
  local start end pids=() share sender  # local: the caller's $pid is its receiver
  start=$(now)
  for share in "$3"/share*; do
    /usr/bin/storescu -aet BENCH -aec "$2" +sd +r +sp '*.dcm' 127.0.0.1 "$1" "$share" \
      >>"$WORK/storescu.log" 2>&1 &
    pids+=($!); started $!
  done
  for sender in "${pids[@]}"; do wait "$sender"; done
  end=$(now)
  $PY -c "print($end - $start)"
}

run_storescp() { # senders -> seconds
  local port dir
  port=$(free_port); dir="$WORK/scp$1"; mkdir -p "$dir"
  /usr/bin/storescp -aet STORESCP -od "$dir" "$port" >/dev/null 2>&1 &
  local pid=$!; started "$pid"
  wait_port "$port"
  send "$port" STORESCP "$(deal "$1")"
  stop "$pid" 50
  [ "$(find "$dir" -type f | wc -l)" -eq "$COUNT" ] || { echo "storescp kept too few" >&2; exit 1; }
  rm -rf "$dir"
}

run_node() { # senders -> seconds (no rules: only receiving is measured)
  local port http dir
  port=$(free_port); http=$(free_port); dir="$WORK/node$1"; mkdir -p "$dir"
  cat > "$dir/node.toml" <<TOML
[node]
ae_title = "DICOMNODE"
host = "127.0.0.1"
port = $port
storage_dir = "$dir/var"
min_free_disk_mb = 100
series_idle_seconds = 3600
max_associations = 16
[http]
port = $http
TOML
  PYTHONPATH=$ROOT $PY -m dicomnode.cli serve --config "$dir/node.toml" >"$dir/node.log" 2>&1 &
  local pid=$!; started "$pid"
  wait_port "$port"
  send "$port" DICOMNODE "$(deal "$1")"
  local stored
  stored=$($PY -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM instances').fetchone()[0])" "$dir/var/index.sqlite")
  stop "$pid"
  [ "$stored" -eq "$COUNT" ] || { echo "dicomnode indexed $stored of $COUNT" >&2; exit 1; }
  rm -rf "$dir"
}

run_orthanc() { # senders -> seconds
  local port http dir
  port=$(free_port); http=$(free_port); dir="$WORK/orthanc$1"; mkdir -p "$dir"
  cat > "$dir/orthanc.json" <<JSON
{"Name": "bench", "StorageDirectory": "$dir/db", "IndexDirectory": "$dir/db",
 "HttpPort": $http, "DicomPort": $port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": false,
 "AuthenticationEnabled": false, "DicomCheckCalledAet": false, "Plugins": [],
 "DicomAlwaysAllowStore": true, "StorageCompression": false, "SyncStorageArea": true,
 "DicomThreadsCount": 4}
JSON
  /usr/sbin/Orthanc --logdir="$dir" "$dir/orthanc.json" >/dev/null 2>&1 &
  local pid=$!; started "$pid"
  wait_port "$port"
  send "$port" ORTHANC "$(deal "$1")"
  local stored
  stored=$(curl -s "http://127.0.0.1:$http/statistics" | $PY -c 'import json,sys; print(json.load(sys.stdin)["CountInstances"])')
  stop "$pid"
  [ "$stored" -eq "$COUNT" ] || { echo "Orthanc stored $stored of $COUNT" >&2; exit 1; }
  rm -rf "$dir"
}

PYTHONPATH=$ROOT $PY bench/make_instances.py "$WORK/src" --count "$COUNT" >/dev/null
BYTES=$(du -sb "$WORK/src" | cut -f1)
RESULTS="$WORK/results"
for n in "${SENDERS[@]}"; do  # assignments, so a failed run stops the script (set -e)
  seconds=$(run_storescp "$n"); echo "storescp $n $seconds" >>"$RESULTS"
  seconds=$(run_node "$n"); echo "dicomnode $n $seconds" >>"$RESULTS"
done
seconds=$(run_orthanc 1); echo "orthanc 1 $seconds" >>"$RESULTS"
rm -rf "$WORK"/in*

$PY - "$COUNT" "$BYTES" "$RESULTS" "$(git rev-parse --short HEAD 2>/dev/null || echo ?)" <<'PYEOF'
import os, sys
count, size, path, rev = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rate = {}
for line in open(path):
    name, senders, seconds = line.split()
    rate[name, int(senders)] = count / float(seconds)
print(f"instances: {count} x {size / count / 1024:.0f} KiB, commit {rev}, "
      f"load average {os.getloadavg()[0]:.2f}, nice {os.nice(0)}")
print(f"{'receiver':<42} {'assoc':>5} {'inst/s':>8}")
order = {"storescp": 0, "dicomnode": 1, "orthanc": 2}
for (name, senders), value in sorted(rate.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
    label = {"storescp": "DCMTK storescp (no fsync)",
             "dicomnode": "dicomnode serve (durable before Success)",
             "orthanc": "Orthanc (SyncStorageArea)"}[name]
    print(f"{label:<42} {senders:>5} {value:>8.1f}")
for (name, senders), value in sorted(rate.items()):
    if name == "dicomnode" and ("storescp", senders) in rate:
        print(f"dicomnode / storescp, {senders} assoc: {value / rate['storescp', senders]:.2f}")
if ("dicomnode", 1) in rate and ("orthanc", 1) in rate:
    print(f"dicomnode / Orthanc, 1 assoc: {rate['dicomnode', 1] / rate['orthanc', 1]:.2f}")
PYEOF
