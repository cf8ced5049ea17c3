# Shared by scripts/test.sh and bench/run.sh: installs missing tools and starts the services the
# tests and the benchmark use. Source it from the repository root with ROOT set.
# shellcheck shell=bash

STATE="$ROOT/target/test-env"
mkdir -p "$STATE"
export IMAGE_PRELOADER_TEST_REGISTRY="${IMAGE_PRELOADER_TEST_REGISTRY:-127.0.0.1:5000}"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"
  fi
}

# Debian packages: the daemon, the registry, a static busybox for runnable test images, GNU time.
ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  [ -x /usr/bin/time ] || missing+=(time)
  command -v curl >/dev/null || missing+=(curl)
  if [ "${#missing[@]}" -gt 0 ]; then
    step "installing ${missing[*]}"
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# A Docker daemon on the default socket (or $DOCKER_HOST), started in the background if none answers.
ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return; fi
  [ -z "${DOCKER_HOST:-}" ] || die "no Docker daemon answers at DOCKER_HOST=$DOCKER_HOST"
  step "starting dockerd (log: $STATE/dockerd.log)"
  as_root sh -c "nohup dockerd --host unix:///var/run/docker.sock >'$STATE/dockerd.log' 2>&1 &"
  for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  tail -n 30 "$STATE/dockerd.log" >&2 || true
  die "dockerd did not start within 60 s"
}

# A registry (distribution 2.8) on $IMAGE_PRELOADER_TEST_REGISTRY, started if none answers.
ensure_registry() {
  local addr=$IMAGE_PRELOADER_TEST_REGISTRY
  if curl -fsS "http://$addr/v2/" >/dev/null 2>&1; then return; fi
  step "starting a registry on $addr (log: $STATE/registry.log)"
  mkdir -p "$STATE/registry"
  cat >"$STATE/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $addr
EOF
  nohup docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 &
  for _ in $(seq 1 60); do
    if curl -fsS "http://$addr/v2/" >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  tail -n 30 "$STATE/registry.log" >&2 || true
  die "the registry did not start on $addr within 30 s"
}
