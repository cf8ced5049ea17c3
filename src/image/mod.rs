//! Images as the user names them: references, the archive name each one gets, and the image list.

pub mod list;
pub mod naming;
pub mod reference;
