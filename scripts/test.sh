#!/usr/bin/env bash
# The test command. On a fresh machine it installs what the tests need, starts a Docker daemon and
# registries on 127.0.0.1 (an open one and a password-protected one) when none answers, and a second
# daemon (Debian 13's Docker 26 with the containerd image store, on its own socket) when none
# answers there, fetches helm and kubernetes-validate, builds the container image offline
# (docker/build.sh), then runs formatting and lint checks and every test. Tests that exercise the
# daemon run on both daemons.
#
#   scripts/test.sh              # everything
#   scripts/test.sh -- FILTER    # only tests whose name contains FILTER (after the checks)
#
# Services it starts keep running afterwards (reruns are fast); their logs and data live under
# target/test-env/, the second daemon's under /var/lib/image-preloader-test/ (shared by every
# checkout on the machine). Environment:
#   IMAGE_PRELOADER_TEST_REGISTRY  registry address for the tests (default 127.0.0.1:5000)
#   IMAGE_PRELOADER_TEST_AUTH_REGISTRY  the password-protected one (default 127.0.0.1:5001; data in
#                                  /var/tmp/image-preloader-test/auth-registry)
#   DOCKER_HOST                    the classic-store daemon (default unix:///var/run/docker.sock)
#   IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD
#                                  the containerd-store daemon
#                                  (default unix:///run/image-preloader-test/docker.sock)
#   IMAGE_PRELOADER_TEST_TAG       tag of the test container image (default test)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"

filter=()
if [ "${1:-}" = "--" ]; then
  shift
  filter=("$@")
fi

ensure_packages
ensure_dockerd
ensure_containerd_dockerd
ensure_registry
ensure_auth_registry
ensure_helm
ensure_kubernetes_validate
ensure_musl_target
build_test_image

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --all-targets --quiet -- "${filter[@]}"

step "all tests passed"
