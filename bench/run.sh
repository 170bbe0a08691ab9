#!/usr/bin/env bash
# wtchat's standard benchmark set (issue 5): builds in release mode, starts a fresh
# `wtchat serve` on loopback for every run (so memory figures start clean), runs the load
# tool against it, repeats each scenario, and prints the medians against the budget.
#
#   bench/run.sh                 # the standard set, 3 runs each (about 9 minutes)
#   bench/run.sh ws-fanout       # one scenario (or several, by name)
#   bench/run.sh engines         # SQLite beside memory: four pairs, with their ratios
#   bench/run.sh bigrooms        # join storms into one room of 10,000, and their baselines
#   bench/run.sh redis           # two nodes sharing a room through Redis, beside memory
#   bench/run.sh posted          # Server-Sent Events and long polling beside WebSocket
#   bench/run.sh resume          # resumes that read the engine beside a quiet room
#   bench/run.sh reactions       # 10,000 members react to one message while one sends
#   bench/run.sh reads           # 10,000 members mark the room read while one sends
#   bench/run.sh lossy           # head-of-line blocking under loss: WebTransport beside
#                                # WebSocket, through a lossy path of the tool's (root)
#   RUNS=5 bench/run.sh wt-idle  # more runs
#   bench/run.sh --list          # the scenarios and what they run
#
# Environment:
#   RUNS=3          runs per scenario (medians are printed); the runs go round the chosen
#                   scenarios (A1 B1 A2 B2 ...), so that a busy spell hits all alike
#   NO_BUILD=1      skip `cargo build --release`
#   SERVER=PATH     the `wtchat` binary to run (default target/release/wtchat), e.g. one
#                   built from another commit, to measure before and after a change
#   CARGO_TARGET_DIR=DIR  where cargo builds (default target): the tool, and the server
#                   unless SERVER says otherwise, are taken from DIR/release
#   OUT=FILE        where the JSON lines go (default target/bench/results-<time>.jsonl)
#   DB_DIR=DIR      where each SQLite run's fresh database directory is made (default
#                   $TMPDIR or /tmp); it must be a real disk: on tmpfs fsync is free
#   QUIET_WAIT=60   seconds to wait, before each run, for other processes to go quiet
#   QUIET_MAX=25    "quiet": other processes use less than this % of one core
#   PROFILE=1       also record the server with `perf` during each fan-out's measured
#                   window (target/bench/NAME-RUN.perf.data) and print its top functions
#                   (needs `perf`: apt-get install linux-perf; sampling costs the server ~1%)
#   REDIS_NODES=2   `wtchat serve` processes sharing the rooms in a `redis` scenario
#   REDIS_AOF=1     Redis with its append-only file (--appendonly yes --appendfsync
#                   everysec, in a directory under DB_DIR); default: no persistence at all
#   REDIS_SERVER=redis-server   the Redis binary (needs redis-cli beside it)
#
# Every scenario names the server's engine: `memory`, `sqlite` (a database in a fresh
# directory made for that one run and removed after it), or `redis` (a redis-server of its
# own on a free loopback port, fresh for that one run, and REDIS_NODES servers on it; the
# clients are spread evenly over the servers). Traffic stays on 127.0.0.1, but for the
# `lossy` scenarios' receiver (through the tool's TUN device). Flags of the server's own may
# follow the engine's name (`memory --history 1000`).
# Every run is bounded (timeout), and the servers, Redis, the databases and the temporary
# certificate directory are removed on exit, including on failure and ctrl-c.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_MAX=${QUIET_MAX:-25}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SERVER=${SERVER:-$TARGET_DIR/release/wtchat}
TOOL=$TARGET_DIR/release/wtchat-bench

# name | engine (memory, sqlite or redis; then any server flags) | tool arguments (the script adds --http,
# --server-pid, with redis --redis-pid, --label, --json). Budgets (issue 5) travel in the JSON line; `wtchat-bench summary`
# checks medians, and a budget FIELD/LABEL checks the ratio to LABEL's median, so a
# *-sqlite scenario is judged against its memory twin run in the same invocation.
# In wt-fanout and wt-latency the WebTransport clients speak protocol 4, as browsers do
# (`--room-streams`: each room's frames on a stream of its own); the other WebTransport
# scenarios keep protocol 1's one stream.
SCENARIOS=(
  "ws-fanout|memory|fanout --transport ws --subscribers 1000 --publishers 10 --duration 5 --budget server_ns_per_delivery=400"
  "ws-fanout-sqlite|sqlite|fanout --transport ws --subscribers 1000 --publishers 10 --duration 5 --budget server_ns_per_delivery/ws-fanout<=1.1"
  "wt-fanout|memory|fanout --transport wt --room-streams --subscribers 200 --publishers 10 --duration 5 --budget server_ns_per_delivery=800"
  "wt-1000|memory|fanout --transport wt --subscribers 1000 --publishers 10 --rate 50 --duration 5"
  "ws-throughput|memory|fanout --transport ws --subscribers 13 --publishers 10 --window 64 --duration 5"
  "ws-throughput-sqlite|sqlite|fanout --transport ws --subscribers 13 --publishers 10 --window 64 --duration 5 --budget acked_per_s>=50000 --budget acked_per_s/ws-throughput>=0.7"
  "ws-latency|memory|fanout --transport ws --subscribers 1000 --publishers 10 --rate 20 --duration 8 --budget latency_us.p99=15000"
  "ws-latency-sqlite|sqlite|fanout --transport ws --subscribers 1000 --publishers 10 --rate 20 --duration 8 --budget latency_us.p99/ws-latency<=1.2"
  "wt-latency|memory|fanout --transport wt --room-streams --subscribers 1000 --publishers 10 --rate 20 --duration 8 --budget latency_us.p99=30000"
  "ws-idle|memory|idle --transport ws --subscribers 10000 --budget bytes_per_connection=8192"
  "wt-idle|memory|idle --transport wt --subscribers 1000 --budget bytes_per_connection=65536"
)
# Not in the standard set; run by name.
EXTRA=(
  # ws-fanout with 64 sends in flight per publisher instead of 8: SQLite acknowledges after
  # a commit, so with 8 in flight its publishers send less, and the server writes smaller
  # (dearer per delivery) batches; with 64 both engines run at the same load.
  "ws-fanout-w64|memory|fanout --transport ws --subscribers 1000 --publishers 10 --window 64 --duration 5"
  "ws-fanout-sqlite-w64|sqlite|fanout --transport ws --subscribers 1000 --publishers 10 --window 64 --duration 5 --budget server_ns_per_delivery/ws-fanout-w64<=1.1"
  # ws-fanout at a fixed 3000 messages/s (3 M deliveries/s, below both engines' maximum):
  # the cost of a delivery at the same load, whatever the publishers' round trip.
  "ws-fanout-3k|memory|fanout --transport ws --subscribers 1000 --publishers 10 --rate 3000 --duration 5"
  "ws-fanout-sqlite-3k|sqlite|fanout --transport ws --subscribers 1000 --publishers 10 --rate 3000 --duration 5 --budget server_ns_per_delivery/ws-fanout-3k<=1.1"
  "mix-fanout|memory|fanout --transport mix --ws-fraction 0.5 --subscribers 1000 --publishers 10 --rate 200 --duration 5"
  "ws-fanout-1t|memory|fanout --transport ws --subscribers 1000 --publishers 10 --duration 5 --threads 1"
  "ws-latency-1t|memory|fanout --transport ws --subscribers 1000 --publishers 10 --rate 20 --duration 8 --threads 1"
  "wt-latency-1t|memory|fanout --transport wt --subscribers 1000 --publishers 10 --rate 20 --duration 8 --threads 1"
  # A stream per room (protocol 4) beside one stream for everything: wt-fanout's load with
  # the clients of protocol 1 (no hello: every frame on the session's one stream, as before
  # protocol 4), and wt-fanout with every member in 16 rooms (the server's default most per
  # connection) that the publishers send to in turn, so 16 room streams per session, each
  # with 1/16 of the messages: what the streams cost a delivery, against wt-fanout's.
  "wt-fanout-p1|memory|fanout --transport wt --subscribers 200 --publishers 10 --duration 5 --versus wt-fanout"
  "wt-fanout-16|memory|fanout --transport wt --room-streams --rooms-per-session 16 --subscribers 200 --publishers 10 --duration 5 --versus wt-fanout"
  # wt-fanout at a fixed 500 messages/s (100,000 deliveries/s, half the server at most):
  # at full speed the tool's own cost sets the batch sizes, and so the server's cost per
  # delivery; at a fixed load the server's cost per delivery is its own, to compare builds.
  "wt-fanout-500|memory|fanout --transport wt --room-streams --subscribers 200 --publishers 10 --rate 500 --duration 5"
  # The same two at a fixed 1000 messages/s (200,000 deliveries/s, below the server's most
  # with 16 rooms): at full speed every write batch holds frames of all 16 rooms, each a
  # write and an acknowledged chunk of its own, so there the streams cost the most per
  # delivery; at a load the server carries, what a room stream costs a delivery.
  "wt-fanout-100|memory|fanout --transport wt --room-streams --subscribers 200 --publishers 10 --rate 100 --duration 5"
  "wt-fanout-16-100|memory|fanout --transport wt --room-streams --rooms-per-session 16 --subscribers 200 --publishers 10 --rate 100 --duration 5 --versus wt-fanout-100 --budget server_ns_per_delivery/wt-fanout-100<=1.2"
  # Big rooms (the `bigrooms` set): filling one room must cost what its joins cost, not the
  # square of its size. Each storm is judged against a baseline run in the same invocation:
  # a join into an empty room (each client its own room), and a bare WebTransport session.
  "ws-join-10k|memory|join --transport ws --subscribers 10000 --budget join_s=2 --budget bytes_per_member=12288 --budget server_cpu_per_join_us/ws-join-empty-10k<=3"
  "ws-join-empty-10k|memory|join --transport ws --subscribers 10000 --rooms each"
  "wt-join-2k|memory|join --transport wt --subscribers 2000 --budget server_cpu_per_join_us/wt-bare-2k<=1.5"
  "wt-bare-2k|memory|join --transport wt --subscribers 2000 --no-join"
  # 10,000 members, 10 messages/s in total: 100,000 deliveries/s.
  "ws-10k-fanout|memory|fanout --transport ws --subscribers 10000 --publishers 10 --rate 10 --duration 10 --budget latency_us.p99=100000"
  # Reactions in a big room (issue 25): the 10,000 members each add a reaction (👍 🎉 😂 👀
  # in turn) to one message, spread evenly over 10 s, while one of them sends 10 msgs/s
  # (ws-10k-fanout's load). Every reaction acked, every member ending at that count (the
  # summary checks both), at most one update of the message per member per presence
  # interval, and the messages' p99 during the reactions under 100 ms. The server keeps
  # 500 messages in memory per room instead of 100: the memory engine refuses a reaction
  # to a message older than that tail (`unknown_message`), and at 10 msgs/s the message
  # would leave it halfway through the reactions.
  "ws-reactions-10k|memory --history 500|reactions --transport ws --subscribers 10000 --rate 10 --spread 10 --budget latency_us.p99=100000"
  # The same reactions beside 1 msg/s: the server is far from its limit, so its CPU per
  # reaction (net of the baseline's) is the reactions' own, and the p99 rise theirs too.
  "ws-reactions-10k-quiet|memory --history 500|reactions --transport ws --subscribers 10000 --rate 1 --spread 10"
  # Read marks in a big room (issue 26): the 10,000 members each mark the room read up to
  # the newest message they have, spread evenly over 10 s (1,000 marks/s), while one of
  # them sends 10 msgs/s (ws-10k-fanout's load). Every mark answered at or past what it
  # marked, to the marking member alone: a big room sends the others nothing (no
  # `receipts`, no `read` they did not ask for; the summary checks both), and the
  # messages' p99 during the marks under 100 ms. A mark names the newest message, so the
  # memory engine's default tail of 100 does (no --history).
  "ws-reads-10k|memory|reads --transport ws --subscribers 10000 --rate 10 --spread 10 --budget latency_us.p99=100000"
  # The same marks beside 1 msg/s: the server far from its limit, so its CPU per mark (net
  # of the baseline's) is the marks' own.
  "ws-reads-10k-quiet|memory|reads --transport ws --subscribers 10000 --rate 1 --spread 10"
  # ws-reads-10k on SQLite: each mark is a write (the messages' commits beside them).
  "ws-reads-10k-sqlite|sqlite|reads --transport ws --subscribers 10000 --rate 10 --spread 10 --budget latency_us.p99=100000"
  # Redis (the `redis` set): REDIS_NODES (2) servers share one room through a redis-server
  # of the run's own; clients and publishers are spread evenly over them (500 + 500
  # members, 5 + 5 publishers). Each is its memory twin's load; server figures are summed
  # over the nodes, Redis's CPU is reported beside them (redis_ns_per_delivery), not in
  # them; `--versus` makes `summary` print the ratios to the twin.
  "ws-fanout-redis|redis|fanout --transport ws --subscribers 1000 --publishers 10 --duration 5 --versus ws-fanout --budget server_ns_per_delivery/ws-fanout<=1.3"
  "ws-throughput-redis|redis|fanout --transport ws --subscribers 13 --publishers 10 --window 64 --duration 5 --versus ws-throughput"
  "ws-latency-redis|redis|fanout --transport ws --subscribers 1000 --publishers 10 --rate 20 --duration 8 --versus ws-latency --budget latency_us.p99/ws-latency<=1.5"
  # ws-fanout-redis at the same load as its twin: with Redis the ack comes after a round
  # trip through it, so with 8 in flight the publishers send less and the servers write
  # smaller (dearer per delivery) batches, as with SQLite. Run by name, with their twins.
  "ws-fanout-redis-w64|redis|fanout --transport ws --subscribers 1000 --publishers 10 --window 64 --duration 5 --versus ws-fanout-w64"
  "ws-fanout-redis-3k|redis|fanout --transport ws --subscribers 1000 --publishers 10 --rate 3000 --duration 5 --versus ws-fanout-3k"
  # Server-Sent Events and long polling (the `posted` set), each beside its WebSocket twin
  # at the same load: every member on the transport, the publishers posting their sends
  # (POST, one frame per line, as the browser client does). No budgets: `--versus` makes
  # `summary` print the ratios to the twin.
  "sse-fanout|memory|fanout --transport sse --subscribers 1000 --publishers 10 --duration 5 --versus ws-fanout"
  "poll-fanout|memory|fanout --transport poll --subscribers 1000 --publishers 10 --duration 5 --versus ws-fanout"
  # At a fixed 1000 messages/s (1 M deliveries/s: 3000 is more than SSE or polling carry on
  # 2 cores), so that a closed loop's round trip does not set the load.
  "ws-fanout-1k|memory|fanout --transport ws --subscribers 1000 --publishers 10 --rate 1000 --duration 5"
  "sse-fanout-1k|memory|fanout --transport sse --subscribers 1000 --publishers 10 --rate 1000 --duration 5 --versus ws-fanout-1k"
  "poll-fanout-1k|memory|fanout --transport poll --subscribers 1000 --publishers 10 --rate 1000 --duration 5 --versus ws-fanout-1k"
  # The same with the publishers on WebSocket: the cost of delivering to SSE or polling
  # members alone, without the posts'.
  "sse-fanout-1k-wsp|memory|fanout --transport sse --ws-publishers --subscribers 1000 --publishers 10 --rate 1000 --duration 5 --versus ws-fanout-1k"
  "poll-fanout-1k-wsp|memory|fanout --transport poll --ws-publishers --subscribers 1000 --publishers 10 --rate 1000 --duration 5 --versus ws-fanout-1k"
  # ws-latency's load (1000 members, 20 messages/s): what the transport adds to a message's way.
  "sse-latency|memory|fanout --transport sse --subscribers 1000 --publishers 10 --rate 20 --duration 8 --versus ws-latency"
  "poll-latency|memory|fanout --transport poll --subscribers 1000 --publishers 10 --rate 20 --duration 8 --versus ws-latency"
  # ws-idle's connections (10,000, each joined to a room of 100). An idle polling client
  # keeps a poll held (the server answers an empty one after 25 s, and it asks again).
  "sse-idle|memory|idle --transport sse --subscribers 10000 --versus ws-idle"
  "poll-idle|memory|idle --transport poll --subscribers 10000 --versus ws-idle"
  # A slow store does not stall a room (issue 22; the `resume` set): ws-latency's load with
  # 2000-byte messages, in a room filled with 2000 of them before the members join. Beside
  # each quiet room, the same with 4 resumers that rejoin it again and again from 490
  # messages back: each resume reads ~390 messages older than the server's in-memory tail
  # (100) from the engine while the members receive. 490, not max_replay's 500: the head
  # the tool knows (from the acks) trails the server's by a message now and then, and a
  # resume past 500 would be answered with a gap. The figure is the members' latency,
  # `--versus` gives its ratio to the quiet room's.
  "ws-latency-quiet-sqlite|sqlite|fanout --transport ws --subscribers 1000 --publishers 10 --rate 20 --duration 8 --text-bytes 2000 --prefill 2000"
  "ws-latency-resume-sqlite|sqlite|fanout --transport ws --subscribers 1000 --publishers 10 --rate 20 --duration 8 --text-bytes 2000 --prefill 2000 --resumers 4 --resume-back 490 --versus ws-latency-quiet-sqlite"
  "ws-latency-quiet-redis|redis|fanout --transport ws --subscribers 1000 --publishers 10 --rate 20 --duration 8 --text-bytes 2000 --prefill 2000"
  "ws-latency-resume-redis|redis|fanout --transport ws --subscribers 1000 --publishers 10 --rate 20 --duration 8 --text-bytes 2000 --prefill 2000 --resumers 4 --resume-back 490 --versus ws-latency-quiet-redis"
  # Head-of-line blocking under loss (issue 27; the `lossy` set): one receiver in two rooms,
  # a quiet one (~100 B, 20 msgs/s throughout) and a busy one (~1 KB: off, 250, then 500
  # msgs/s, 5 s each, 2 s of drain before 500), through a path the tool makes over a TUN
  # device (root): 2% loss and 10 ms each way, at the IP level, so TCP and QUIC cross the
  # same impairment. The senders are WebSocket clients straight to the server. The figure is
  # the quiet room's latency per phase: with a stream per room (protocol 4) its p90 beside
  # 250 msgs/s within 1.3 x its p90 with the busy room off, and its median beside 500 within
  # 40 ms (two round trips) of it; on one stream (WebTransport protocol 1, and WebSocket) a
  # busy room's lost packet holds it back (report only). The server listens on 0.0.0.0: the
  # path delivers the receiver's packets to the device's address.
  "wt-lossy|memory|lossy --transport wt --protocol 4 --budget phases.busy_250.quiet_p90_vs_off<=1.3 --budget phases.busy_500.quiet_p50_over_off_ms<=40"
  "wt-lossy-p1|memory|lossy --transport wt --protocol 1"
  "ws-lossy|memory|lossy --transport ws"
)
# Names for several scenarios at once.
SETS=(
  "engines|ws-fanout ws-fanout-sqlite ws-throughput ws-throughput-sqlite ws-latency ws-latency-sqlite ws-fanout-w64 ws-fanout-sqlite-w64 ws-fanout-3k ws-fanout-sqlite-3k"
  "bigrooms|ws-join-empty-10k ws-join-10k wt-bare-2k wt-join-2k ws-10k-fanout"
  "redis|ws-fanout ws-fanout-redis ws-throughput ws-throughput-redis ws-latency ws-latency-redis"
  "reactions|ws-10k-fanout ws-reactions-10k ws-reactions-10k-quiet"
  "reads|ws-10k-fanout ws-reads-10k ws-reads-10k-quiet ws-reads-10k-sqlite"
  "resume|ws-latency-quiet-sqlite ws-latency-resume-sqlite ws-latency-quiet-redis ws-latency-resume-redis"
  "lossy|wt-lossy wt-lossy-p1 ws-lossy"
  "posted|ws-fanout sse-fanout poll-fanout ws-fanout-1k sse-fanout-1k poll-fanout-1k sse-fanout-1k-wsp poll-fanout-1k-wsp ws-latency sse-latency poll-latency ws-idle sse-idle poll-idle"
)

if [[ ${1:-} == --list || ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
  echo
  for s in "${SCENARIOS[@]}" "${EXTRA[@]}"; do
    printf '  %-25s %-7s %s\n' "${s%%|*}" "$(cut -d'|' -f2 <<<"$s")" "${s#*|*|}"
  done
  for g in "${SETS[@]}"; do printf '  %-25s set: %s\n' "${g%%|*}" "${g#*|}"; done
  exit 0
fi

selected=()
names=("$@")
if [[ $# -eq 0 ]]; then
  selected=("${SCENARIOS[@]}")
fi
for g in "${SETS[@]}"; do
  for i in "${!names[@]}"; do
    if [[ ${names[$i]} == "${g%%|*}" ]]; then
      # shellcheck disable=SC2206 # the set's names are split on spaces
      names=("${names[@]:0:i}" ${g#*|} "${names[@]:i+1}")
      break
    fi
  done
done
for name in ${names[@]+"${names[@]}"}; do
  found=
  for s in "${SCENARIOS[@]}" "${EXTRA[@]}"; do
    [[ ${s%%|*} == "$name" ]] && selected+=("$s") && found=1
  done
  [[ -n $found ]] || { echo "unknown scenario: $name (see --list)" >&2; exit 2; }
done

if [[ -z ${NO_BUILD:-} ]]; then
  cargo build --release -p wtchat-cli -p wtchat-bench
fi

# Thousands of sockets on each side: raise the open-file limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < 10100 )); then
  echo "warning: open-file limit $(ulimit -n) is below what 10,000 connections need" >&2
fi
rmem=$(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo 0)
if (( rmem < 4194304 )); then
  echo "warning: net.core.rmem_max is $rmem: the server's 4 MiB UDP buffers are capped" \
       "(sysctl -w net.core.rmem_max=4194304 net.core.wmem_max=4194304)" >&2
fi

REDIS_NODES=${REDIS_NODES:-2}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
uses_redis=
for s in "${selected[@]}"; do
  [[ $(cut -d'|' -f2 <<<"$s") == redis* ]] && uses_redis=1
done
if [[ -n $uses_redis ]]; then
  REDIS_CLI=$(dirname "$(command -v "$REDIS_SERVER" || echo /usr/bin/redis-server)")/redis-cli
  command -v "$REDIS_CLI" >/dev/null || REDIS_CLI=redis-cli
  if ! command -v "$REDIS_SERVER" >/dev/null || ! command -v "$REDIS_CLI" >/dev/null; then
    echo "the redis scenarios need $REDIS_SERVER and redis-cli (apt-get install redis-server)" >&2
    exit 2
  fi
  [[ $REDIS_NODES =~ ^[1-9][0-9]*$ ]] || { echo "REDIS_NODES must be 1 or more" >&2; exit 2; }
fi

TMP=$(mktemp -d)
mkdir -p target/bench
OUT=${OUT:-target/bench/results-$(date +%Y%m%d-%H%M%S).jsonl}
DB_DIR=${DB_DIR:-${TMPDIR:-/tmp}}
SERVER_PID=   # the servers' pids, separated by commas (one, unless nodes share Redis)
SERVER_PIDS=()
HTTPS=()
DB=
REDIS_PID=
REDIS_DIR=
SERVER_FLAGS=()   # the scenario's own server flags, after its engine's name

stop_server() {
  local pid
  # The nodes first (they are Redis's clients), all told at once, then Redis.
  for pid in ${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}; do
    kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
  done
  for pid in ${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}; do
    for _ in $(seq 70); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  SERVER_PIDS=()
  HTTPS=()
  SERVER_PID=
  if [[ -n $DB ]]; then
    rm -rf "$DB"
    DB=
  fi
  if [[ -n $REDIS_PID ]]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
  fi
  if [[ -n $REDIS_DIR ]]; then
    rm -rf "$REDIS_DIR"
    REDIS_DIR=
  fi
}
cleanup() {
  stop_server
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port on 127.0.0.1 nobody listens on, below the ephemeral range (where the tool's
# own thousands of connections take their ports).
free_port() {
  local low p
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
  (( low > 11000 )) || low=32768
  for _ in $(seq 100); do
    p=$((10000 + RANDOM % (low - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port found" >&2
  exit 1
}

# Starts a fresh redis-server on a free loopback port, in a new directory of its own
# (removed by stop_server); sets REDIS_PID and REDIS_PORT. Without persistence unless
# REDIS_AOF: no snapshots (--save ''), no append-only file.
start_redis() {
  local persist=(--appendonly no)
  [[ -n ${REDIS_AOF:-} ]] && persist=(--appendonly yes --appendfsync everysec)
  REDIS_DIR=$(mktemp -d "$DB_DIR/wtchat-bench-redis.XXXXXX")
  for _ in 1 2 3 4 5; do
    REDIS_PORT=$(free_port)
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --save '' \
      "${persist[@]}" --daemonize no --logfile "$REDIS_DIR/redis.log" >/dev/null 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 50); do
      [[ $("$REDIS_CLI" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && return 0
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    # Most likely the port was taken in the meantime: another one.
    kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
  done
  echo "redis-server did not start:" >&2
  tail -20 "$REDIS_DIR/redis.log" >&2 || true
  exit 1
}

# Starts one `wtchat serve` with engine $1, its output in $2, listening on $LISTEN; adds
# its pid to SERVER_PIDS and its HTTP address (on loopback) to HTTPS once it says where it
# listens.
start_node() {
  local engine=$1 log=$2 pid http=
  : >"$log"
  # Every client of the tool comes from 127.0.0.1: the per-address budgets are raised
  # (those a build older than them does not know are left out, for old/new comparisons).
  local budgets=(--max-connections-per-ip 100000)
  if "$SERVER" serve --help | grep -q -- --max-rooms-per-ip; then
    budgets+=(--max-http-connections-per-ip 100000 --max-streams-per-ip 100000
      --max-rooms-per-ip 100000 --max-new-rooms-per-minute-per-ip 1000000)
  fi
  if "$SERVER" serve --help | grep -q -- --max-new-rooms-per-day-per-ip; then
    budgets+=(--max-new-rooms-per-day-per-ip 1000000)
  fi
  RUST_LOG=warn "$SERVER" serve --engine "$engine" --http "$LISTEN:0" --webtransport "$LISTEN:0" \
    --certs "$TMP/certs" --frames-per-second 1000000 --frame-burst 1000000 \
    --max-connections 100000 --max-http-connections 100000 "${budgets[@]}" --idle-timeout 1h \
    ${SERVER_FLAGS[@]+"${SERVER_FLAGS[@]}"} >"$log" 2>&1 &
  pid=$!
  SERVER_PIDS+=("$pid")
  for _ in $(seq 100); do
    http=$(sed -n 's|^ *HTTP *http://\([0-9.:]*\).*|\1|p' "$log")
    if [[ -n $http ]]; then
      HTTPS+=("${http/#0.0.0.0:/127.0.0.1:}")
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "the server did not start:" >&2
  cat "$log" >&2
  exit 1
}

# Starts fresh servers on free loopback ports with engine $1: memory; sqlite, a database in
# a new directory of its own; or redis, a fresh redis-server and REDIS_NODES servers on it
# (all removed by stop_server). Sets SERVER_PID and HTTP (comma-separated with several
# nodes: the tool takes lists) and, with redis, REDIS_PID.
start_server() {
  local engine nodes=1 i
  case $1 in
    memory) engine=memory ;;
    sqlite)
      DB=$(mktemp -d "$DB_DIR/wtchat-bench-db.XXXXXX")
      engine="sqlite:$DB/wtchat.db"
      ;;
    redis)
      start_redis
      engine="redis://127.0.0.1:$REDIS_PORT"
      nodes=$REDIS_NODES
      ;;
    *) echo "unknown engine: $1" >&2; exit 2 ;;
  esac
  rm -f "$TMP"/server-*.log
  # One after another: the first makes the development certificate the others then share.
  start_node "$engine" "$TMP/server.log"
  for ((i = 1; i < nodes; i++)); do
    start_node "$engine" "$TMP/server-$i.log"
  done
  SERVER_PID=$(IFS=,; echo "${SERVER_PIDS[*]}")
  HTTP=$(IFS=,; echo "${HTTPS[*]}")
}

# Warnings and errors the nodes of a redis run logged (the engine's trouble, if any).
node_warnings() {
  local log
  for log in "$TMP"/server*.log; do
    if grep -qE 'WARN|ERROR' "$log"; then
      echo "  $(basename "$log" .log) logged:"
      grep -E 'WARN|ERROR' "$log" | tail -5 | sed 's/^/    /'
    fi
  done
  return 0
}

# CPU busy on the machine over `1` second, in % of one core.
machine_busy() {
  local a b
  read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ </proc/stat
  sleep 1
  read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ </proc/stat
  a=$(( (u2+n2+s2+q2+sq2+st2) - (u1+n1+s1+q1+sq1+st1) ))
  b=$(getconf CLK_TCK)
  echo $(( a * 100 / b ))
}

# Other processes (builds, browsers) skew every figure: wait a while for them to finish.
wait_quiet() {
  local waited=0 busy
  busy=$(machine_busy)
  while (( busy > QUIET_MAX && waited < QUIET_WAIT )); do
    (( waited == 0 )) && echo "  (machine busy: ${busy}% of a core used by others; waiting up to ${QUIET_WAIT}s)"
    sleep 4
    waited=$((waited + 5))
    busy=$(machine_busy)
  done
  (( busy > QUIET_MAX )) && echo "  (still busy: ${busy}%; running anyway, see other_cpu_pct)"
  return 0
}

# Runs the tool (its JSON line into $OUT, its table into tool.log); with PROFILE, records
# the server with perf for exactly the measured window of a fan-out.
run_tool() {
  local name=$1 run=$2
  shift 2
  if [[ -z ${PROFILE:-} || $1 != fanout ]]; then
    timeout 180 "$TOOL" "$@" >>"$OUT" 2>"$TMP/tool.log"
    return
  fi
  local data="target/bench/$name-$run.perf.data" tool status=0
  rm -f "$TMP/window"
  timeout 180 "$TOOL" "$@" --window-file "$TMP/window" >>"$OUT" 2>"$TMP/tool.log" &
  tool=$!
  for _ in $(seq 1800); do
    [[ -f $TMP/window ]] && break
    kill -0 "$tool" 2>/dev/null || break
    sleep 0.05
  done
  if [[ -f $TMP/window ]]; then
    perf record -e cpu-clock -F 999 -p "$SERVER_PID" -o "$data" \
      -- sleep "$(cat "$TMP/window")" >/dev/null 2>&1 || echo "  (perf record failed)"
    PROFILES+=("$data")
  fi
  wait "$tool" || status=$?
  return $status
}
PROFILES=()

echo "wtchat benchmark: ${#selected[@]} scenario(s) x $RUNS run(s); $(nproc) cores; results in $OUT"
echo "source: $(git describe --always --dirty 2>/dev/null || echo unknown); $(uname -sr)"
if [[ -n $uses_redis ]]; then
  echo "Redis: $("$REDIS_SERVER" --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p'), a fresh" \
    "redis-server per run on a free loopback port, $REDIS_NODES wtchat node(s) on it;" \
    "$([[ -n ${REDIS_AOF:-} ]] &&
      echo "append-only file, fsync every second, in $DB_DIR ($(df --output=fstype "$DB_DIR" 2>/dev/null | tail -1))" ||
      echo "no persistence (--save '' --appendonly no)")"
fi
for s in "${selected[@]}"; do
  if [[ $(cut -d'|' -f2 <<<"$s") == sqlite* ]]; then
    fs=$(df --output=fstype "$DB_DIR" 2>/dev/null | tail -1 || true)
    echo "SQLite databases: a new directory in $DB_DIR (${fs:-unknown file system}) per run"
    [[ $fs == tmpfs || $fs == ramfs ]] &&
      echo "warning: $DB_DIR is in memory: commits cost no disk flush (set DB_DIR)" >&2
    break
  fi
done
failed=0
for run in $(seq "$RUNS"); do
  for s in "${selected[@]}"; do
    name=${s%%|*}
    # shellcheck disable=SC2206 # the server flags are split on spaces
    SERVER_FLAGS=($(cut -d'|' -f2 <<<"$s"))
    engine=${SERVER_FLAGS[0]}
    SERVER_FLAGS=("${SERVER_FLAGS[@]:1}")
    args=${s#*|*|}
    # The lossy path reaches the server at the path's own address, not at 127.0.0.1; that
    # device and its address exist only once the tool runs, after the server started.
    LISTEN=127.0.0.1
    [[ $args == lossy* ]] && LISTEN=0.0.0.0
    echo "== $name, run $run/$RUNS, engine $engine${SERVER_FLAGS[0]+ ${SERVER_FLAGS[*]}}: wtchat-bench $args"
    start_server "$engine"
    wait_quiet
    redis=()
    [[ -n $REDIS_PID ]] && redis=(--redis-pid "$REDIS_PID")
    # shellcheck disable=SC2086 # word splitting of $args is intended
    if run_tool "$name" "$run" $args --http "$HTTP" --server-pid "$SERVER_PID" \
         ${redis[@]+"${redis[@]}"} --label "$name" --json; then
      cat "$TMP/tool.log"
    else
      echo "  run failed (exit $?):" >&2
      tail -5 "$TMP/tool.log" >&2
      failed=$((failed + 1))
    fi
    [[ $engine == redis ]] && node_warnings
    stop_server
  done
done

echo
echo "== medians ($OUT)"
"$TOOL" summary "$OUT" || true
for data in "${PROFILES[@]}"; do
  [[ $data == *-1.perf.data ]] || continue
  echo
  echo "== server profile, $(basename "$data" .perf.data) (self time, top functions)"
  perf report -i "$data" --no-children --sort symbol --stdio --percent-limit 1 -g none \
    2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
done
if (( failed > 0 )); then
  echo "$failed run(s) failed" >&2
  exit 1
fi
