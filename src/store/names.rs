//! The on-disk names of the archive directory, in one place: the archive (`<name>.tar`), its record
//! (`<name>.tar.json`), its lock (`.<name>.tar.lock`) and this tool's temporary files
//! (`.<name>.<random>.image-preloader-partial`).

use std::path::{Path, PathBuf};

/// Suffix of the temporary files this tool writes (the whole pattern is
/// `.<file-name>.<random><TEMP_SUFFIX>`).
pub const TEMP_SUFFIX: &str = ".image-preloader-partial";
/// Suffix appended to the archive's file name to name its record.
pub const RECORD_SUFFIX: &str = ".json";
/// Random characters in a temporary file's name.
pub const TEMP_RANDOM: usize = 6;
/// The longest file name this tool creates: Linux's `NAME_MAX`, the limit of ext4, xfs, btrfs,
/// overlayfs and tmpfs alike.
pub const NAME_MAX: usize = 255;
/// Archive and record files are readable by the runner pods that load them.
pub const FILE_MODE: u32 = 0o644;

/// The record path for an archive path (relative or absolute).
pub fn record_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(RECORD_SUFFIX);
    PathBuf::from(name)
}

/// The archive a record file describes, if `path` is named like a record.
pub fn archive_of(record: &Path) -> Option<PathBuf> {
    let name = record.file_name()?.to_str()?;
    let archive = name.strip_suffix(RECORD_SUFFIX)?;
    archive.ends_with(".tar").then(|| record.with_file_name(archive))
}

/// The lock file for an archive path.
pub fn lock_path(archive: &Path) -> PathBuf {
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    archive.with_file_name(format!(".{name}.lock"))
}

/// Whether a file name is one of our lock files.
pub fn is_lock_file(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(".tar.lock")
}

/// The prefix of a temporary file that will become `path` (its random part and [`TEMP_SUFFIX`]
/// follow).
pub fn temp_prefix(path: &Path) -> String {
    format!(".{}.", path.file_name().unwrap_or_default().to_string_lossy())
}

/// Whether a file name matches this tool's temporary pattern exactly:
/// `.<archive>.tar.<random>` or `.<archive>.tar.json.<random>`, then [`TEMP_SUFFIX`]. Other tools'
/// files that merely end in the suffix do not match.
pub fn is_temporary(file_name: &str) -> bool {
    let Some(rest) = file_name.strip_prefix('.').and_then(|n| n.strip_suffix(TEMP_SUFFIX)) else {
        return false;
    };
    let Some((target, random)) = rest.rsplit_once('.') else { return false };
    random.len() == TEMP_RANDOM
        && random.bytes().all(|b| b.is_ascii_alphanumeric())
        && (target.ends_with(".tar") || target.ends_with(".tar.json"))
        && !target.starts_with(".tar")
}

/// The longest file or directory name this tool derives from an archive path (relative to the
/// directory): the `<user>/` directory, the archive, its record, lock and temporary files. The
/// longest is the record's temporary, `.<name>.tar.json.<random>.image-preloader-partial`.
pub fn longest_name(archive: &Path) -> usize {
    let file = archive.file_name().map_or(0, |n| n.len());
    let dirs = archive.parent().into_iter().flat_map(|p| p.components()).map(|c| c.as_os_str().len());
    let record_temp = 1 + file + RECORD_SUFFIX.len() + 1 + TEMP_RANDOM + TEMP_SUFFIX.len();
    dirs.chain([record_temp]).max().unwrap_or(0)
}

/// Whether a file name looks like an archive (`*.tar`, not hidden).
pub fn is_archive(file_name: &str) -> bool {
    file_name.ends_with(".tar") && !file_name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(record_path(Path::new("team/app_1.tar")), Path::new("team/app_1.tar.json"));
        assert_eq!(archive_of(Path::new("/d/team/app_1.tar.json")), Some(PathBuf::from("/d/team/app_1.tar")));
        assert_eq!(archive_of(Path::new("/d/other.json")), None);
        assert_eq!(archive_of(Path::new("/d/app_1.tar")), None);
        assert_eq!(lock_path(Path::new("/d/team/app_1.tar")), Path::new("/d/team/.app_1.tar.lock"));
        assert!(is_lock_file(".app_1.tar.lock"));
        assert!(!is_lock_file("app_1.tar"));
        assert_eq!(temp_prefix(Path::new("/d/app_1.tar")), ".app_1.tar.");
        assert!(is_temporary(".app_1.tar.x1y2z3.image-preloader-partial"));
        assert!(is_temporary(".app_1.tar.json.x1y2z3.image-preloader-partial"));
        assert!(!is_temporary("app_1.tar"));
        assert!(!is_temporary(".other-tool.image-preloader-partial"));
        assert!(!is_temporary(".app_1.tar.x1y2.image-preloader-partial"), "random part of 6");
        assert!(!is_temporary(".notes.txt.x1y2z3.image-preloader-partial"));
        let name = format!("{}_1.tar", "a".repeat(100));
        assert_eq!(longest_name(&Path::new("team").join(&name)), name.len() + 37);
        assert_eq!(longest_name(&Path::new(&"u".repeat(250)).join("a_1.tar")), 250);
        assert!(is_archive("app_1.tar") && !is_archive(".app_1.tar") && !is_archive("app_1.tar.json"));
    }
}
