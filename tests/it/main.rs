//! Integration tests: the built binary against a real Docker daemon and a real registry on
//! 127.0.0.1 (scripts/test.sh starts both). Every test uses its own images and directories.
//! Tests that exercise the daemon run on both daemons scripts/test.sh starts: `…::classic::…`
//! (Docker 20.10, classic image store) and `…::containerd::…` (Docker 26, containerd image store).

#[macro_use]
mod support;

mod chart;
mod cli;
mod digest;
mod docs;
mod harden;
mod heal;
mod image;
mod interrupt;
mod k8s;
mod load;
mod platforms;
mod pod;
mod refresh;
mod registries;
mod registry;
mod reload;
mod serve;
mod sidecar;
mod stall;
mod status;
mod storage;
mod symlink;
mod warm;
