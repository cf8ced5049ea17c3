//! image-preloader keeps a node-local directory of `docker save` archives fresh, so CI runners
//! `docker load` their images instead of pulling them on every pod start.
//!
//! The pieces, from pure to effectful:
//! - [`reference`], [`naming`], [`images`], [`policy`], [`schedule`]: parsing, archive names, refresh and retry
//!   decisions;
//! - [`tar`], [`layout`]: streaming checks that an export is a complete image archive;
//! - [`archive`], [`record`], [`lock`], [`space`]: the archive directory, atomic publication,
//!   the record beside each archive, one writer per archive, the disk guard;
//! - [`prune`], [`verify`]: removing unlisted archives, checking archives against records;
//! - [`source`], [`docker`]: where images come from;
//! - [`registry`], [`platform`]: registry hosts and credentials, image platforms;
//! - [`pass`], [`cycle`], [`load`], [`app`]: one pass, the `run` loop, loading archives into a
//!   daemon, the commands.

pub mod app;
pub mod archive;
pub mod cli;
pub mod config;
pub mod cycle;
pub mod docker;
pub mod human;
pub mod images;
pub mod layout;
pub mod load;
pub mod lock;
pub mod logging;
pub mod naming;
pub mod pass;
pub mod platform;
pub mod policy;
pub mod prune;
pub mod record;
pub mod reference;
pub mod registry;
pub mod schedule;
pub mod source;
pub mod space;
pub mod tar;
pub mod verify;

pub use app::{AppError, Exit, execute};
pub use config::Config;
