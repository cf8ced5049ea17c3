//! Integration tests: the built binary against a real Docker daemon and a real registry on
//! 127.0.0.1 (scripts/test.sh starts both). Every test uses its own images and directories.

mod cli;
mod digest;
mod image;
mod interrupt;
// k8s.rs (lead-owned scaffolding, shared with the chart tests) is compiled here for the first time:
// until it is formatted and its one clippy::collapsible_if fixed on main, skip both here. The image
// tests use only test_image(), hence dead_code.
#[rustfmt::skip]
#[allow(dead_code, clippy::collapsible_if)]
mod k8s;
mod load;
mod refresh;
mod sidecar;
mod storage;
mod support;
mod warm;
