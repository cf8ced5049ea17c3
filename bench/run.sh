#!/usr/bin/env bash
# Benchmark: image-preloader against the seed chart's shell sequence and skopeo, side by side.
# See bench/README.md. Usage: bench/run.sh [--quick] [--rounds N] [--only W1,W2,W3]
#                                         [--contenders seed,warm,warm-rebuild,registry,skopeo]
#                                         [--daemons classic,containerd] [--load-rounds N] [--help]
#                             bench/run.sh --load [--quick] [--rounds N] [--only W1,W2] [--daemons LIST]
set -euo pipefail

# ---------------------------------------------------------------------------------------------------
# Internal entry points, run under /usr/bin/time by the measurement loop. Each reads a list file of
# "<reference> <archive path relative to DIR>" lines and works sequentially, like the seed chart.

# Rebuild when the archive is missing or at least MAX_AGE days old (0: always; negative: never).
_due() {
  local tar=$1 max_age=$2 mtime now
  [ -f "$tar" ] || return 0
  [ "$max_age" -ge 0 ] || return 1
  mtime=$(stat -c %Y "$tar")
  now=$(date +%s)
  [ $(((now - mtime) / 86400)) -ge "$max_age" ]
}

# The seed chart's loop: `docker pull IMAGE` then `docker save -o <dir>/<user>/<image>_<tag>.tar`.
_seed() {
  local dir=$1 list=$2 max_age=$3 ref rel
  while read -r ref rel; do
    mkdir -p "$(dirname "$dir/$rel")"
    if _due "$dir/$rel" "$max_age"; then
      docker pull "$ref"
      docker save -o "$dir/$rel" "$ref"
    else
      echo "skip $ref (younger than $max_age days)"
    fi
  done <"$list"
}

# The daemonless reference: skopeo copy to docker-archive:, into a temporary name then renamed
# (as `docker save -o` and image-preloader publish), same age rule.
# The runner side as a third-party fork of gha-runner-scale-set does it (`preloadImages`): wait for
# `docker info`, then `docker load -i` each listed archive in turn, skipping missing files, under
# `set -e`.
_loop() {
  local dir=$1 list=$2 ref rel timeout=120
  set -e
  while ! docker info >/dev/null 2>&1; do
    [ "$timeout" -le 0 ] && { echo "Docker daemon failed to start within timeout"; exit 1; }
    timeout=$((timeout - 5))
    sleep 5
  done
  while read -r ref rel; do
    if [ -f "$dir/$rel" ]; then
      docker load -i "$dir/$rel"
    else
      echo "Warning: File $dir/$rel not found, skipping..."
    fi
  done <"$list"
}

_skopeo() {
  local dir=$1 list=$2 max_age=$3 ref rel policy=()
  [ -f /etc/containers/policy.json ] || policy=(--insecure-policy)
  while read -r ref rel; do
    mkdir -p "$(dirname "$dir/$rel")"
    if _due "$dir/$rel" "$max_age"; then
      rm -f "$dir/$rel.skopeo-tmp"
      skopeo "${policy[@]}" copy --src-tls-verify=false "docker://$ref" "docker-archive:$dir/$rel.skopeo-tmp:$ref"
      mv -f "$dir/$rel.skopeo-tmp" "$dir/$rel"
    else
      echo "skip $ref (younger than $max_age days)"
    fi
  done <"$list"
}

case "${1:-}" in
  __seed) shift; _seed "$@"; exit ;;
  __skopeo) shift; _skopeo "$@"; exit ;;
  __loop) shift; _loop "$@"; exit ;;
esac

# ---------------------------------------------------------------------------------------------------
usage() {
  cat <<'EOF'
Usage: bench/run.sh [OPTIONS]
       bench/run.sh --load [--quick] [--rounds N] [--only W1,W2] [--daemons LIST]

Runs image-preloader against the seed chart's `docker pull` + `docker save -o` sequence and against
`skopeo copy … docker-archive:`, alternately, on the local dockerds and registry (127.0.0.1:5000),
and prints a Markdown table of medians (results also in bench/results/).

With --load it measures the runner side instead: `image-preloader load` against the sequential
`docker load -i` loop of a gha-runner-scale-set fork (`preloadImages`), loading the archives of W1
and W2 into a daemon that does not have the images (removed before every round), on each daemon of
--daemons.

Options:
  --quick               small workloads (W1 4x32 MiB, W2 8 images of 16 MiB), 2 rounds
  --rounds N            rounds per workload (default 3; --quick 2)
  --only LIST           workloads to run, comma-separated: W1,W2,W3 (default all)
  --contenders LIST     comma-separated: seed,warm,warm-rebuild,registry,registry-gz,skopeo
                        (default all; warm-rebuild runs in W3 only, skopeo only if it can be
                        installed; registry is `warm --mode registry --layers uncompressed`,
                        registry-gz the same with `--layers compressed`)
  --daemons LIST        daemons the daemon contenders (seed, warm, warm-rebuild) and the load
                        comparison run on, comma-separated: classic (Docker 20.10, classic image
                        store, the test command's first daemon), containerd (Docker 26, containerd
                        image store, its second one) (default both); registry, registry-gz and
                        skopeo need no daemon and run once
  --load-rounds N       rounds of the load comparison (default 3; 0 skips it): `docker load -i`
                        of W1's and W2's daemon-mode and registry-mode archives (uncompressed and
                        compressed layers), alternately
  --load                the runner side: contenders loop,load on W1 and W2
  --help                this text

Workloads:
  W1  one 1 GiB image of four 256 MiB incompressible layers (fresh directory each round)
  W2  eight 64 MiB images of two layers, four random, four text-like (fresh directory each round)
  W3  fifty small images already cached, every archive aged 30 days before each round, nothing
      changed upstream (the refresh case)
EOF
}

QUICK=0
ROUNDS=
ONLY=
CONTENDERS=
DAEMONS=classic,containerd
LOAD_ROUNDS=
LOAD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --rounds=*) ROUNDS=${1#*=} ;;
    --only) ONLY=${2:?--only needs a list}; shift ;;
    --only=*) ONLY=${1#*=} ;;
    --contenders) CONTENDERS=${2:?--contenders needs a list}; shift ;;
    --contenders=*) CONTENDERS=${1#*=} ;;
    --daemons) DAEMONS=${2:?--daemons needs a list}; shift ;;
    --daemons=*) DAEMONS=${1#*=} ;;
    --load-rounds) LOAD_ROUNDS=${2:?--load-rounds needs a number}; shift ;;
    --load-rounds=*) LOAD_ROUNDS=${1#*=} ;;
    --load) LOAD=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$LOAD" = 1 ]; then
  ONLY=${ONLY:-W1,W2} CONTENDERS=${CONTENDERS:-loop,load} LOAD_ROUNDS=0
  [[ ${ONLY^^} != *W3* ]] || { echo "--load: W3 is a refresh workload; use W1,W2" >&2; exit 2; }
else
  ONLY=${ONLY:-W1,W2,W3} CONTENDERS=${CONTENDERS:-seed,warm,warm-rebuild,registry,registry-gz,skopeo}
  LOAD_ROUNDS=${LOAD_ROUNDS:-3}
fi
ONLY=${ONLY^^}
[[ -z $ROUNDS || $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds: not a positive number: $ROUNDS" >&2; exit 2; }
[[ $LOAD_ROUNDS =~ ^[0-9]+$ ]] || { echo "--load-rounds: not a number: $LOAD_ROUNDS" >&2; exit 2; }
for w in ${ONLY//,/ }; do
  [[ $w =~ ^W[123]$ ]] || { echo "--only: unknown workload $w (W1, W2, W3)" >&2; exit 2; }
done
for c in ${CONTENDERS//,/ }; do
  [[ $c =~ ^(seed|warm|warm-rebuild|registry|registry-gz|skopeo|loop|load)$ ]] || { echo "--contenders: unknown contender $c" >&2; exit 2; }
done
for d in ${DAEMONS//,/ }; do
  [[ $d =~ ^(classic|containerd)$ ]] || { echo "--daemons: unknown daemon $d (classic, containerd)" >&2; exit 2; }
done
[ -n "${DAEMONS//,/}" ] || { echo "--daemons: give at least one daemon" >&2; exit 2; }

MIB=$((1024 * 1024))
if [ "$QUICK" = 1 ]; then
  MODE=quick
  ROUNDS=${ROUNDS:-2}
  W1_LAYERS=4 W1_LAYER_MIB=32
  W2_IMAGES=8 W2_LAYERS=2 W2_LAYER_MIB=8
  W3_IMAGES=50 W3_KIB=256
else
  MODE=full
  ROUNDS=${ROUNDS:-3}
  W1_LAYERS=4 W1_LAYER_MIB=256
  W2_IMAGES=8 W2_LAYERS=2 W2_LAYER_MIB=32
  W3_IMAGES=50 W3_KIB=256
fi
# Bump when the generators change, so cached registry content is rebuilt.
GEN=g1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=../scripts/env.sh
source scripts/env.sh
REG=$IMAGE_PRELOADER_TEST_REGISTRY
# The disk guard's default floor (10% of the file system) would refuse W1's gigabyte on a fuller
# shared disk; the benchmark measures speed, not the guard, so keep only a fixed floor.
export IMAGE_PRELOADER_MIN_FREE=${IMAGE_PRELOADER_MIN_FREE:-2Gi}
SELF="$ROOT/bench/run.sh"
WORK="$ROOT/bench/work"
RESULTS="$ROOT/bench/results"
BIN="$ROOT/target/release/image-preloader"
mkdir -p "$WORK" "$RESULTS"

has() { [[ ",$2," == *",$1,"* ]]; }

step "environment (scripts/env.sh)"
ensure_packages
ensure_dockerd
has containerd "$DAEMONS" && ensure_containerd_dockerd
ensure_registry
# Images are built and pushed on the classic daemon; each daemon's runs point DOCKER_HOST (the
# docker CLI's and image-preloader's) at it.
CLASSIC_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}
daemon_host() { # classic|containerd
  case $1 in
    classic) echo "$CLASSIC_HOST" ;;
    containerd) echo "$IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD" ;;
  esac
}
export DOCKER_HOST=$CLASSIC_HOST
command -v python3 >/dev/null || {
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 >/dev/null
}
if has skopeo "$CONTENDERS" && ! command -v skopeo >/dev/null; then
  step "installing skopeo (Debian)"
  as_root apt-get update -q >/dev/null || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends skopeo >/dev/null ||
    echo "warning: skopeo could not be installed; the skopeo contender is skipped" >&2
fi
if has skopeo "$CONTENDERS" && ! command -v skopeo >/dev/null; then
  CONTENDERS=$(tr ',' '\n' <<<"$CONTENDERS" | grep -vx skopeo | paste -sd,)
fi

step "cargo build --release"
cargo build --release -q
[ -x "$BIN" ] || die "no binary at $BIN"

# ---------------------------------------------------------------------------------------------------
# Deterministic data and cached test images.

# N bytes of incompressible data from seed S: AES-128-CTR keystream (openssl), else Python's PRNG.
gen_random() { # seed bytes out
  local hex
  hex=$(printf '%s' "$1" | sha256sum | cut -c1-64)
  if command -v openssl >/dev/null; then
    # openssl stops on SIGPIPE when head has enough: not an error.
    { openssl enc -aes-128-ctr -nosalt -K "${hex:0:32}" -iv "${hex:32:32}" -in /dev/zero 2>/dev/null || true; } |
      head -c "$2" >"$3"
  else
    python3 - "$1" "$2" "$3" <<'PY'
import random, sys
rng, left = random.Random(sys.argv[1]), int(sys.argv[2])
with open(sys.argv[3], "wb") as f:
    while left > 0:
        n = min(left, 1 << 20); f.write(rng.getrandbits(8 * n).to_bytes(n, "little")); left -= n
PY
  fi
}

# N bytes of text-like data from seed S: lines of words from a fixed vocabulary (gzip ~3.5:1).
gen_text() { # seed bytes out
  python3 - "$1" "$2" "$3" <<'PY'
import random, sys
rng, left = random.Random(sys.argv[1]), int(sys.argv[2])
syll = ["ka", "lo", "mi", "ne", "tra", "sel", "vo", "rin", "dus", "pa", "gre", "on", "ti", "cal", "ber", "u"]
vocab = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(2000)]
with open(sys.argv[3], "wb") as f:
    while left > 0:
        words = rng.choices(vocab, k=40000)
        lines = [" ".join(words[i:i + rng.randint(6, 14)]) for i in range(0, len(words), 10)]
        chunk = ("\n".join(lines) + "\n").encode()[:left]
        f.write(chunk); left -= len(chunk)
PY
}

manifest_digest() { # ref (127.0.0.1:5000/repo:tag)
  local path=${1#*/} repo tag
  repo=${path%:*} tag=${path##*:}
  curl -fsSI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REG/v2/$repo/manifests/$tag" 2>/dev/null |
    tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}'
}

# Builds and pushes image REF made of layers "kind:seed:bytes" unless the registry already holds
# the digest this script pushed for exactly these parameters (cache key in bench/work/cache).
ensure_image() { # ref layer...
  local ref=$1; shift
  local key="$GEN $ref $*" keyfile="$WORK/cache/$(tr '/:' '__' <<<"$ref").key" have
  mkdir -p "$WORK/cache"
  if [ -f "$keyfile" ] && [ "$(sed -n 1p "$keyfile")" = "$key" ]; then
    have=$(manifest_digest "$ref") || have=  # a tag the registry no longer has: rebuild
    if [ -n "$have" ] && [ "$have" = "$(sed -n 2p "$keyfile")" ]; then return; fi
  fi
  echo "building $ref ($*)" >&2
  local ctx="$WORK/build" i=0 spec kind seed bytes
  rm -rf "$ctx" && mkdir -p "$ctx"
  printf 'FROM scratch\n' >"$ctx/Dockerfile"
  for spec in "$@"; do
    IFS=: read -r kind seed bytes <<<"$spec"
    "gen_$kind" "$seed" "$bytes" "$ctx/layer$i"
    touch -d @0 "$ctx/layer$i"
    printf 'COPY layer%d /data/layer%d\n' "$i" "$i" >>"$ctx/Dockerfile"
    i=$((i + 1))
  done
  local log="$WORK/logs/build.log"
  DOCKER_BUILDKIT=0 docker build -q -t "$ref" "$ctx" >"$log" 2>&1 || { cat "$log" >&2; die "docker build $ref failed"; }
  docker push -q "$ref" >"$log" 2>&1 || { cat "$log" >&2; die "docker push $ref failed"; }
  docker rmi -f "$ref" >/dev/null
  rm -rf "$ctx"
  printf '%s\n%s\n' "$key" "$(manifest_digest "$ref")" >"$keyfile"
}

# Image lists per workload: "<ref> <archive path>" lines (archive names from `image-preloader path`,
# the seed chart's naming).
write_list() { # file ref...
  local file=$1; shift
  paste -d' ' <(printf '%s\n' "$@") <("$BIN" path "$@") >"$file"
}

prepare_workload() { # W
  local w=$1 refs=() i l layers
  case $w in
    W1)
      layers=()
      for ((l = 0; l < W1_LAYERS; l++)); do layers+=("random:w1-$l:$((W1_LAYER_MIB * MIB))"); done
      refs=("$REG/bench/w1:${W1_LAYERS}x${W1_LAYER_MIB}m-$GEN")
      ensure_image "${refs[0]}" "${layers[@]}"
      ;;
    W2)
      for ((i = 0; i < W2_IMAGES; i++)); do
        local kind=random
        [ $((i % 2)) = 1 ] && kind=text
        layers=()
        for ((l = 0; l < W2_LAYERS; l++)); do layers+=("$kind:w2-$i-$l:$((W2_LAYER_MIB * MIB))"); done
        refs+=("$REG/bench/w2-$i-$kind:${W2_LAYERS}x${W2_LAYER_MIB}m-$GEN")
        ensure_image "${refs[-1]}" "${layers[@]}"
      done
      ;;
    W3)
      for ((i = 0; i < W3_IMAGES; i++)); do
        refs+=("$REG/bench/w3-$i:${W3_KIB}k-$GEN")
        ensure_image "${refs[-1]}" "random:w3-$i:$((W3_KIB * 1024))"
      done
      ;;
  esac
  write_list "$WORK/$w.list" "${refs[@]}"
}

# ---------------------------------------------------------------------------------------------------
# Measurement.

ROWS="$WORK/rows.tsv"
: >"$ROWS"
# The daemon the current rows are measured on ("-" for contenders that use none).
DAEMON=-

remove_from_daemon() { # list
  local refs
  mapfile -t refs < <(cut -d' ' -f1 "$1")
  docker rmi -f "${refs[@]}" >/dev/null 2>&1 || true
}

contender_cmd() { # contender dir list -> CMD array
  local c=$1 dir=$2 list=$3 refs
  mapfile -t refs < <(cut -d' ' -f1 "$list")
  case $c in
    seed) CMD=("$SELF" __seed "$dir" "$list" 7) ;;
    skopeo) CMD=("$SELF" __skopeo "$dir" "$list" 7) ;;
    warm) CMD=("$BIN" warm --mode daemon --dir "$dir" "${refs[@]}") ;;
    warm-rebuild) CMD=("$BIN" warm --mode daemon --dir "$dir" --refresh-policy rebuild "${refs[@]}") ;;
    registry) CMD=("$BIN" warm --mode registry --layers uncompressed --dir "$dir" "${refs[@]}") ;;
    registry-gz) CMD=("$BIN" warm --mode registry --layers compressed --dir "$dir" "${refs[@]}") ;;
    loop) CMD=("$SELF" __loop "$dir" "$list") ;;
    load)
      local rels
      mapfile -t rels < <(cut -d' ' -f2 "$list")
      CMD=("$BIN" load --dir "$dir" "${rels[@]}")
      ;;
  esac
}

# Sum of the sizes of the archives (*.tar) in DIR that are not the very file SNAP holds a hard
# link to: new files and files replaced by a rename. The hard links keep the old inodes alive, so
# an inode number cannot be reused during the round. Touching an archive's time counts nothing.
snapshot() { # dir snap
  rm -rf "$2" && mkdir -p "$2"
  (cd "$1" && find . -name '*.tar' -type f -print0) | while IFS= read -r -d '' f; do
    mkdir -p "$2/$(dirname "$f")" && ln "$1/$f" "$2/$f"
  done
}
archive_bytes_written() { # dir snap
  local total=0 f size
  while IFS= read -r -d '' f; do
    if ! [ "$1/$f" -ef "$2/$f" ]; then
      size=$(stat -c %s "$1/$f")
      total=$((total + size))
    fi
  done < <(cd "$1" && find . -name '*.tar' -type f -print0)
  rm -rf "$2"
  echo "$total"
}

measure() { # workload contender round dir list
  local w=$1 c=$2 r=$3 dir=$4 list=$5
  local log="$WORK/logs/$w-$DAEMON-$c-$r.log" tv="$WORK/logs/$w-$DAEMON-$c-$r.time" snap="$WORK/snap"
  mkdir -p "$WORK/logs"
  contender_cmd "$c" "$dir" "$list"
  sync
  snapshot "$dir" "$snap"
  local t0 t1 rc=0
  t0=$(date +%s%N)
  /usr/bin/time -v -o "$tv" "${CMD[@]}" >"$log" 2>&1 || rc=$?
  t1=$(date +%s%N)
  if [ "$rc" != 0 ]; then
    tail -n 30 "$log" >&2
    die "$c failed in $w round $r (exit $rc); log: $log"
  fi
  # Deferred write-back left behind (not part of the wall time): how long a sync takes now.
  local f0 f1
  f0=$(date +%s%N); sync; f1=$(date +%s%N)
  local bytes rss user sys fsout
  bytes=$(archive_bytes_written "$dir" "$snap")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")
  user=$(awk -F': ' '/User time \(seconds\)/ {print $2}' "$tv")
  sys=$(awk -F': ' '/System time \(seconds\)/ {print $2}' "$tv")
  fsout=$(awk -F': ' '/File system outputs/ {print $2}' "$tv")
  local wall flush
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
  flush=$(awk -v a="$f0" -v b="$f1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$c" "$r" "$wall" "$rss" "$user" "$sys" \
    "$bytes" "$((fsout * 512))" "$flush" "$DAEMON" >>"$ROWS"
  printf '  %-3s round %d %-10s %-13s wall %8ss  rss %7s KiB  cpu %6.2fs  archive bytes %12s\n' \
    "$w" "$r" "$DAEMON" "$c" "$wall" "$rss" "$(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')" "$bytes" >&2
}

age_archives() { # dir
  find "$1" -name '*.tar' -type f -exec touch -d '30 days ago' {} +
}

run_workload() { # W contender...
  local w=$1 list="$WORK/$1.list" cs=() c
  shift
  for c in "$@"; do
    has "$c" "$CONTENDERS" || continue
    [ "$c" = warm-rebuild ] && [ "$w" != W3 ] && continue
    cs+=("$c")
  done
  [ ${#cs[@]} -gt 0 ] || return 0
  step "$w on daemon $DAEMON: ${cs[*]} × $ROUNDS rounds ($(wc -l <"$list") images)"
  if [ "$w" = W3 ]; then
    # Warm a template directory once with our tool (so records exist), then give every contender
    # its own copy. The images stay in the daemon: a refresh finds them there, as on a node.
    local tpl="$WORK/out/W3-template"
    rm -rf "$tpl" && mkdir -p "$tpl"
    local refs
    mapfile -t refs < <(cut -d' ' -f1 "$list")
    "$BIN" warm --mode "$([ "$DAEMON" = - ] && echo registry || echo daemon)" --dir "$tpl" "${refs[@]}" \
      >"$WORK/logs/W3-template.log" 2>&1 ||
      die "warming the W3 template failed; log: $WORK/logs/W3-template.log"
    for c in "${cs[@]}"; do
      rm -rf "$WORK/out/W3-$c" && cp -a "$tpl" "$WORK/out/W3-$c"
    done
  fi
  local r dir
  for ((r = 1; r <= ROUNDS; r++)); do
    for c in "${cs[@]}"; do
      dir="$WORK/out/$w-$c"
      if [ "$w" = W3 ]; then
        age_archives "$dir"
      else
        rm -rf "$dir" && mkdir -p "$dir"
        remove_from_daemon "$list"
      fi
      measure "$w" "$c" "$r" "$dir" "$list"
      [ "$w" = W3 ] || rm -rf "$dir"
    done
  done
}

# `docker load -i` of the daemon-mode archive (uncompressed layers) against the registry-mode
# archives of the same images, with uncompressed layers (`--layers uncompressed`) and with the
# registry's gzip layers (`--layers compressed`), alternately; each load starts with the images
# removed from the daemon, so every layer is unpacked again. Rows: workload L-W1/L-W2, contender
# load-daemon/load-registry/load-registry-gz; "archive bytes" is the archive's size.
LOADS="$WORK/loads.tsv"
: >"$LOADS"
run_loads() { # W
  local w=$1 list="$WORK/$1.list" refs r c dir t0 t1 bytes
  mapfile -t refs < <(cut -d' ' -f1 "$list")
  step "load $w into daemon $DAEMON: daemon-mode vs registry-mode archives × $LOAD_ROUNDS rounds"
  local -A how=([daemon]="--mode daemon" [registry]="--mode registry --layers uncompressed"
    [registry-gz]="--mode registry --layers compressed")
  for c in daemon registry registry-gz; do
    dir="$WORK/out/L-$w-$c"
    rm -rf "$dir" && mkdir -p "$dir"
    remove_from_daemon "$list"
    # shellcheck disable=SC2086 # the mode's words
    "$BIN" warm ${how[$c]} --dir "$dir" "${refs[@]}" >"$WORK/logs/L-$w-$c.log" 2>&1 ||
      die "warming the $c-mode archives for the load comparison failed; log: $WORK/logs/L-$w-$c.log"
  done
  for ((r = 1; r <= LOAD_ROUNDS; r++)); do
    for c in daemon registry registry-gz; do
      dir="$WORK/out/L-$w-$c"
      remove_from_daemon "$list"
      sync
      bytes=$(find "$dir" -name '*.tar' -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
      t0=$(date +%s%N)
      while read -r _ rel; do
        docker load -q -i "$dir/$rel" >/dev/null || die "docker load of $dir/$rel failed"
      done <"$list"
      t1=$(date +%s%N)
      printf '%s\t%s\t%s\t%s\t0\t0\t0\t%s\t0\t0\t%s\n' "L-$w" "load-$c" "$r" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')" "$bytes" "$DAEMON" >>"$ROWS"
      printf '  L-%-3s round %d %-10s load-%-8s wall %8ss  archive bytes %12s\n' "$w" "$r" "$DAEMON" "$c" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')" "$bytes" >&2
    done
  done
  remove_from_daemon "$list"
  rm -rf "$WORK/out/L-$w-daemon" "$WORK/out/L-$w-registry" "$WORK/out/L-$w-registry-gz"
}

# The runner side on the current daemon: the workload's archives are saved once by that daemon (as
# the DaemonSet's dind would), then each round removes the images and loads them back, alternately
# with the fork's loop and with `image-preloader load`.
run_load_workload() { # W
  local w=$1 list="$WORK/$1.list" cs=() c r
  for c in loop load; do has "$c" "$CONTENDERS" && cs+=("$c"); done
  [ ${#cs[@]} -gt 0 ] || return 0
  local src="$WORK/out/$w-archives-$DAEMON" refs
  mapfile -t refs < <(cut -d' ' -f1 "$list")
  step "$w on daemon $DAEMON: saving the archives once ($(wc -l <"$list") images)"
  rm -rf "$src" && mkdir -p "$src"
  "$BIN" warm --mode daemon --dir "$src" --min-free 2Gi "${refs[@]}" >"$WORK/logs/$w-$DAEMON-warm.log" 2>&1 ||
    die "warming $w on $DAEMON failed; log: $WORK/logs/$w-$DAEMON-warm.log"
  step "$w on daemon $DAEMON: ${cs[*]} × $ROUNDS rounds"
  for ((r = 1; r <= ROUNDS; r++)); do
    for c in "${cs[@]}"; do
      remove_from_daemon "$list"
      measure "$w" "$c" "$r" "$src" "$list"
    done
  done
  remove_from_daemon "$list"
  rm -rf "$src"
}

mkdir -p "$WORK/logs"
for w in W1 W2 W3; do
  has "$w" "$ONLY" || continue
  step "$w: preparing images (cached in the registry after the first run)"
  prepare_workload "$w"
done
for d in ${DAEMONS//,/ }; do
  DAEMON=$d
  export DOCKER_HOST
  DOCKER_HOST=$(daemon_host "$d")
  for w in W1 W2 W3; do
    has "$w" "$ONLY" || continue
    if [ "$LOAD" = 1 ]; then
      run_load_workload "$w"
    else
      run_workload "$w" seed warm warm-rebuild
    fi
  done
  if [ "$LOAD_ROUNDS" -gt 0 ]; then
    for w in W1 W2; do
      has "$w" "$ONLY" || continue
      run_loads "$w"
    done
  fi
done
# The daemonless contenders, once (on no daemon).
DAEMON=-
DOCKER_HOST=$CLASSIC_HOST
for w in W1 W2 W3; do
  has "$w" "$ONLY" || continue
  run_workload "$w" registry registry-gz skopeo
done

# ---------------------------------------------------------------------------------------------------
# Report: raw rounds as JSON, medians as Markdown.
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$RESULTS/$STAMP-$MODE"
[ "$LOAD" = 1 ] && OUT="$OUT-load"
export BENCH_SIDE=$([ "$LOAD" = 1 ] && echo load || echo save)
export BENCH_LOAD_CONCURRENCY=${IMAGE_PRELOADER_CONCURRENCY:-default}
export BENCH_MODE=$MODE BENCH_ROUNDS=$ROUNDS BENCH_STAMP=$STAMP
export BENCH_W1="${W1_LAYERS}x${W1_LAYER_MIB} MiB" BENCH_W2="${W2_IMAGES} images x ${W2_LAYERS}x${W2_LAYER_MIB} MiB"
export BENCH_W3="${W3_IMAGES} images x ${W3_KIB} KiB"
export BENCH_NPROC=$(nproc) BENCH_MEM=$(awk '/MemTotal/ {printf "%.0f", $2 * 1024}' /proc/meminfo)
export BENCH_KERNEL=$(uname -r) BENCH_CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
docker_about() { # classic|containerd
  DOCKER_HOST=$(daemon_host "$1") docker info --format \
    '{{.ServerVersion}} ({{.Driver}}{{range .DriverStatus}}{{if eq (index . 0) "driver-type"}}, {{index . 1}}{{end}}{{end}})' \
    2>/dev/null || echo unknown
}
BENCH_DOCKER=$(for d in ${DAEMONS//,/ }; do printf '%s: Docker %s; ' "$d" "$(docker_about "$d")"; done)
export BENCH_DOCKER=${BENCH_DOCKER%; }
export BENCH_DAEMONS=$DAEMONS
export BENCH_FS=$(df -T "$WORK" | awk 'NR == 2 {print $2}')
export BENCH_SKOPEO=$(skopeo --version 2>/dev/null || echo none)
export BENCH_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
export BENCH_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$ROWS" "$OUT" <<'PY'
import json, os, statistics, sys
rows_file, out = sys.argv[1], sys.argv[2]
env = os.environ
rounds = []
for line in open(rows_file):
    w, c, r, wall, rss, user, sys_, abytes, fsout, flush, daemon = line.rstrip("\n").split("\t")
    rounds.append(dict(workload=w, daemon=daemon, contender=c, round=int(r), wall_s=float(wall),
                       max_rss_kib=int(rss), user_s=float(user), sys_s=float(sys_),
                       cpu_s=round(float(user) + float(sys_), 2), archive_bytes_written=int(abytes),
                       fs_output_bytes=int(fsout), flush_after_s=float(flush)))
machine = dict(nproc=int(env["BENCH_NPROC"]), memory_bytes=int(env["BENCH_MEM"]),
               cpu=env["BENCH_CPU"], kernel=env["BENCH_KERNEL"], docker=env["BENCH_DOCKER"],
               archive_fs=env["BENCH_FS"],
               skopeo=env["BENCH_SKOPEO"], loadavg_at_end=env["BENCH_LOAD"])
side = env["BENCH_SIDE"]
if side == "load":
    machine["load_concurrency"] = env["BENCH_LOAD_CONCURRENCY"]
doc = dict(timestamp=env["BENCH_STAMP"], mode=env["BENCH_MODE"], side=side, rounds=int(env["BENCH_ROUNDS"]),
           commit=env["BENCH_COMMIT"], machine=machine,
           workloads=dict(W1=env["BENCH_W1"], W2=env["BENCH_W2"], W3=env["BENCH_W3"]),
           results=rounds)
with open(out + ".json", "w") as f:
    json.dump(doc, f, indent=2); f.write("\n")

def human(n):
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024

order = ["seed", "warm", "warm-rebuild", "registry", "registry-gz", "skopeo", "load-daemon", "load-registry",
         "load-registry-gz", "loop", "load"]
baseline = "loop" if side == "load" else "seed"
lines = [f"Mode `{doc['mode']}`{' (load side)' if side == 'load' else ''}, {doc['rounds']} rounds, commit `{doc['commit']}`, {doc['timestamp']}. "
         f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_bytes'] / 2**30:.1f} GiB RAM, "
         f"Linux {machine['kernel']}, daemons {machine['docker']}, "
         f"archives on {machine['archive_fs']}, {'`load --concurrency` ' + machine['load_concurrency'] if side == 'load' else 'skopeo: ' + machine['skopeo']}. Load average at end: {machine['loadavg_at_end']}.",
         "",
         f"| Workload | Daemon | Contender | Wall (median) | vs {baseline} | Peak RSS | CPU (user+sys) | Archive bytes written | All file writes | Wall min–max |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
daemons = env["BENCH_DAEMONS"].split(",") + ["-"]
for w in ["W1", "W2", "W3", "L-W1", "L-W2"]:
    for d in daemons:
        rs = [x for x in rounds if x["workload"] == w and x["daemon"] == d]
        if not rs:
            continue
        med = lambda c, k: statistics.median(x[k] for x in rs if x["contender"] == c)
        # Each daemon's contenders against the seed on that daemon; the daemonless ones against
        # the seed on the first daemon.
        base = "load-daemon" if w.startswith("L-") else baseline
        base_rs = rs if d != "-" else [x for x in rounds if x["workload"] == w and x["daemon"] == daemons[0]]
        base_walls = [x["wall_s"] for x in base_rs if x["contender"] == base]
        seed_wall = statistics.median(base_walls) if base_walls else None
        for c in order:
            if not any(x["contender"] == c for x in rs):
                continue
            walls = [x["wall_s"] for x in rs if x["contender"] == c]
            ratio = f"{med(c, 'wall_s') / seed_wall:.2f}×" if seed_wall else "–"
            label = f"{w} ({doc['workloads'][w]})" if w in doc["workloads"] else f"{w} (docker load)"
            lines.append(f"| {label} | {d if d != '-' else 'none'} | {c} | {med(c, 'wall_s'):.2f} s | {ratio} | "
                         f"{human(med(c, 'max_rss_kib') * 1024)} | {med(c, 'cpu_s'):.2f} s | "
                         f"{human(med(c, 'archive_bytes_written'))} | {human(med(c, 'fs_output_bytes'))} | "
                         f"{min(walls):.2f}–{max(walls):.2f} s |")
text = "\n".join(lines) + "\n"
latest = "latest-load.md" if side == "load" else "latest.md"
for path in (out + ".md", os.path.join(os.path.dirname(out), latest)):
    with open(path, "w") as f:
        f.write(text)
print(text)
PY
echo "raw rounds: ${OUT#"$ROOT"/}.json, table: ${OUT#"$ROOT"/}.md and bench/results/latest$([ "$LOAD" = 1 ] && echo -load).md" >&2
