//! The `docker save` archive format: a streaming tar scanner, the image layouts (classic and
//! OCI) it must hold to be complete, and a builder that writes one from registry blobs.

pub mod builder;
pub mod layout;
pub mod tar;
