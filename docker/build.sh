#!/usr/bin/env bash
# Builds the container image offline: a static musl binary built on this machine, put into the
# final stage of docker/Dockerfile (FROM scratch, no base image pull, no network) with the classic
# builder. Tags image-preloader:<TAG> (default `dev`) and prints the image size.
#
#   docker/build.sh [TAG]
#
# Needs cargo + rustup (the musl target is added if missing) and a Docker daemon. The release build
# with multi-arch support is docker/Dockerfile itself (see docker/README.md).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

tag=${1:-dev}
image="image-preloader:$tag"
started=$SECONDS

say() { printf '%s\n' "$*" >&2; }
die() { printf 'docker/build.sh: error: %s\n' "$*" >&2; exit 1; }

case "$(uname -m)" in
  x86_64 | amd64) triple=x86_64-unknown-linux-musl ;;
  aarch64 | arm64) triple=aarch64-unknown-linux-musl ;;
  *) die "no musl target for this machine ($(uname -m)); use docker/Dockerfile with buildx" ;;
esac

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no package version in Cargo.toml"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

# 1. The static binary.
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$triple" ]; then
  say "adding the $triple target"
  rustup target add "$triple" >&2
fi
# ring (rustls' cryptography, for registry mode's TLS) compiles a little C and assembly: for the
# musl target use the host's C compiler unless a musl one or CC_<triple> is set.
cc_var="CC_${triple//-/_}"
if [ -z "${!cc_var:-}" ] && ! command -v "${triple%%-*}-linux-musl-gcc" >/dev/null; then
  export "$cc_var=cc"
fi
say "cargo build --release --locked --target $triple"
cargo build --release --locked --target "$triple" >&2
binary="${CARGO_TARGET_DIR:-$ROOT/target}/$triple/release/image-preloader"
[ -x "$binary" ] || die "cargo did not produce $binary"

# 2. Static: no program interpreter (dynamic loader) and no shared-library dependencies.
is_static() {
  if command -v readelf >/dev/null; then
    readelf -h "$1" | grep -q 'Class:.*ELF' || return 1
    ! readelf -lW "$1" | grep -q 'INTERP' && ! readelf -dW "$1" 2>/dev/null | grep -q '(NEEDED)'
  elif command -v python3 >/dev/null; then
    python3 - "$1" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
if data[:4] != b"\x7fELF" or data[4] != 2:
    sys.exit(1)
end = "<" if data[5] == 1 else ">"
phoff, = struct.unpack_from(end + "Q", data, 0x20)
phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
types = [struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
sys.exit(1 if 3 in types else 0)  # PT_INTERP
PY
  else
    die "neither readelf nor python3 is available to check that the binary is static"
  fi
}
is_static "$binary" || die "$binary is not a static executable (it has a program interpreter or NEEDED libraries)"

# 3. The image: the final stage of docker/Dockerfile, with its binary taken from the context.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/image-preloader"
chmod 0755 "$context/image-preloader"
from_stage='COPY --from=build /out/image-preloader /image-preloader'
sed -n '/^# ---- final stage/,$p' docker/Dockerfile >"$context/final"
[ "$(grep -cxF "$from_stage" "$context/final")" = 1 ] && grep -q '^FROM scratch$' "$context/final" \
  || die "docker/Dockerfile: expected a '# ---- final stage' marker, FROM scratch and one '$from_stage'"
sed "s|^${from_stage}\$|COPY image-preloader /image-preloader|" "$context/final" >"$context/Dockerfile"
rm "$context/final"

say "docker build -t $image (classic builder, FROM scratch)"
previous=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
DOCKER_BUILDKIT=0 docker build -q \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  -t "$image" "$context" >/dev/null
# The image this tag replaced (another binary or revision) would linger untagged: remove it unless
# something else still uses it. Only when no tag is left on it: removing an image by ID removes every
# tag of its repository, and another checkout's image-preloader:<TAG> may be the same image.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$image")" ] \
  && [ "$(docker image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi

bytes=$(docker image inspect --format '{{.Size}}' "$image")
binary_bytes=$(wc -c <"$binary")
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
say "built $image: image-preloader $version ($triple), image size $(mib "$bytes") ($bytes bytes)," \
  "binary $(mib "$binary_bytes"), in $((SECONDS - started)) s"
echo "$image"
