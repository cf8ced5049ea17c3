//! Integration tests: the built binary against a real Docker daemon and a real registry on
//! 127.0.0.1 (scripts/test.sh starts both). Every test uses its own images and directories.

mod cli;
mod digest;
mod image;
mod interrupt;
#[allow(dead_code)] // helpers shared with the chart tests; the image tests use test_image() only
mod k8s;
mod load;
mod refresh;
mod sidecar;
mod storage;
mod support;
mod warm;
