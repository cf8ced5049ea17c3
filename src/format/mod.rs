//! The `docker save` archive format: a streaming tar scanner and the image layouts (classic and
//! OCI) it must hold to be complete.

pub mod layout;
pub mod tar;
