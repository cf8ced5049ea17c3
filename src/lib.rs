//! image-preloader keeps a node-local directory of `docker save` archives fresh, so CI runners
//! `docker load` their images instead of pulling them on every pod start.
//!
//! The modules, from pure to effectful (each only uses those above it):
//! - [`human`], [`image`]: formatting; references, archive names and the image list;
//! - [`progress`]: progress for people (bars on a terminal, occasional lines elsewhere), which
//!   `daemon` and `preload` report to;
//! - [`platform`], [`registry`]: image platforms; registry hosts and Docker config credentials;
//! - [`format`]: the `docker save` archive format: streaming tar scanner and layout checks;
//! - [`store`]: the archive directory: names, records, locks, the one publish path, the disk
//!   guard, prune and verify;
//! - [`daemon`]: a Docker daemon: waiting, connecting, presence checks and `load`;
//! - [`source`]: where images come from (the [`source::ImageSource`] interface, the source chosen
//!   at run time, a daemon as a source);
//! - [`preload`]: deciding, one pass, the `run` loop and its status feed;
//! - [`cli`], [`config`], [`logging`], [`app`]: the command line, validated configuration,
//!   logging and the commands wired together.

pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod format;
pub mod human;
pub mod image;
pub mod logging;
pub mod platform;
pub mod preload;
pub mod progress;
pub mod registry;
pub mod source;
pub mod store;

pub use app::{AppError, Exit, execute};
pub use config::Config;
