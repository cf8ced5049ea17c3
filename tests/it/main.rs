//! Integration tests: the built binary against a real Docker daemon and a real registry on
//! 127.0.0.1 (scripts/test.sh starts both). Every test uses its own images and directories.

mod chart;
mod cli;
mod digest;
mod docs;
mod harden;
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
mod status;
mod storage;
mod support;
mod warm;
