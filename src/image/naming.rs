//! Where an image's archive lives, relative to the archive directory.
//!
//! Rules (compatible with the seed chart wherever it was right):
//! - drop the registry domain (with its port), keep the last two path components
//!   (`<user>/<image>`); a single component stays single;
//! - append `_<tag>.tar`; no tag means `latest`;
//! - a digest-only reference uses `_<algorithm>-<hex>.tar`; with both a tag and a digest the tag
//!   names the file and the digest decides what is pulled.

use std::path::PathBuf;

use crate::image::reference::Reference;

/// Extension of every archive this tool writes.
pub const ARCHIVE_EXTENSION: &str = "tar";

/// The archive path for `reference`, relative to the archive directory.
pub fn archive_path(reference: &Reference) -> PathBuf {
    let path = reference.path();
    let keep = &path[path.len().saturating_sub(2)..];
    let suffix = match (reference.tag(), reference.digest()) {
        (Some(tag), _) => tag.to_owned(),
        (None, Some(digest)) => format!("{}-{}", digest.algorithm(), digest.hex()),
        (None, None) => "latest".to_owned(),
    };
    let (dirs, image) = keep.split_at(keep.len() - 1);
    let mut out: PathBuf = dirs.iter().collect();
    out.push(format!("{}_{suffix}.{ARCHIVE_EXTENSION}", image[0]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(reference: &str) -> String {
        archive_path(&Reference::parse(reference).unwrap()).to_string_lossy().into_owned()
    }

    #[test]
    fn naming_table() {
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let table = [
            (
                "selenium/standalone-firefox:4.23.1-20240820",
                "selenium/standalone-firefox_4.23.1-20240820.tar".to_owned(),
            ),
            (
                "harbor.example.com/hub/selenium/standalone-firefox:4.23.1-20240820",
                "selenium/standalone-firefox_4.23.1-20240820.tar".to_owned(),
            ),
            ("nginx:1.21.0", "nginx_1.21.0.tar".to_owned()),
            ("docker.io/library/nginx:1.21.0", "library/nginx_1.21.0.tar".to_owned()),
            ("registry.local:5000/team/app:2.0", "team/app_2.0.tar".to_owned()),
            ("registry.local:5000/app:2.0", "app_2.0.tar".to_owned()),
            ("localhost/app", "app_latest.tar".to_owned()),
            ("nginx", "nginx_latest.tar".to_owned()),
            ("a/b/c/d:1", "c/d_1.tar".to_owned()),
            (&format!("busybox:1.36@sha256:{hex}"), "busybox_1.36.tar".to_owned()),
            (&format!("busybox@sha256:{hex}"), format!("busybox_sha256-{hex}.tar")),
            (&format!("ghcr.io/org/tool@sha256:{hex}"), format!("org/tool_sha256-{hex}.tar")),
        ];
        for (reference, expected) in table {
            assert_eq!(name(reference), expected, "for {reference}");
        }
    }

    #[test]
    fn paths_stay_inside_the_directory() {
        for reference in ["a", "a/b", "r.io/a/b/c", "localhost:5000/x-y/z__w:v.1-2"] {
            let path = archive_path(&Reference::parse(reference).unwrap());
            assert!(path.is_relative());
            assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))), "{path:?}");
            assert!(path.components().count() <= 2);
        }
    }
}
