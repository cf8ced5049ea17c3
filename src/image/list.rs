//! The image list: entries from the command line and an images file, validated as a whole
//! before any work starts. An entry is a reference, optionally followed by `platform=OS/ARCH`
//! (the grammar and the naming rule are in [`crate::platform`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::image::naming::archive_path;
use crate::image::reference::Reference;
use crate::platform::{self, Platform};
use crate::store::names;

/// One image to preload and where its archive goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The reference as parsed.
    pub reference: Reference,
    /// The archive path, relative to the archive directory.
    pub archive: PathBuf,
    /// The platform to fetch; `None`: the source's own (the daemon's platform).
    pub platform: Option<Platform>,
}

impl ImageSpec {
    /// The spec for a reference, for the source's own platform.
    pub fn new(reference: Reference) -> ImageSpec {
        ImageSpec::for_platform(reference, None)
    }

    /// The spec for an entry with its own platform: the archive name carries the platform.
    pub fn for_platform(reference: Reference, platform: Option<Platform>) -> ImageSpec {
        let archive = match &platform {
            None => archive_path(&reference),
            Some(platform) => platform::suffixed_archive_path(&archive_path(&reference), platform),
        };
        ImageSpec { reference, archive, platform }
    }

    /// The entry as written in a list: `REF [platform=OS/ARCH[/VARIANT]]`.
    pub fn entry(&self) -> String {
        match &self.platform {
            Some(platform) => format!("{} platform={platform}", self.reference),
            None => self.reference.to_string(),
        }
    }
}

/// Where an entry came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The n-th positional argument (1-based).
    Argument(usize),
    /// A line (1-based) of an images file.
    Line(PathBuf, usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Argument(n) => write!(f, "argument {n}"),
            Origin::Line(path, n) => write!(f, "{}:{n}", path.display()),
        }
    }
}

/// Every problem found in the image list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageListError {
    #[error("cannot read images file {path}: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// The validated list, plus the exact duplicates that were dropped (for a warning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageList {
    /// Unique images, in the order given.
    pub images: Vec<ImageSpec>,
    /// `(origin, reference)` of entries dropped because an earlier one names the same image.
    pub duplicates: Vec<(String, String)>,
    /// `(origin, reference, earlier reference)` of entries that name the same image as an earlier
    /// one but a different archive (`nginx` and `docker.io/library/nginx:latest`): both archives
    /// are written.
    pub same_image: Vec<(String, String, String)>,
}

/// Reads the images file (one entry per line; `#` comments, blank lines and surrounding
/// spaces ignored).
/// It must be a regular file of at most [`IMAGES_FILE_MAX`] bytes: a device or a FIFO is refused
/// without being read or waited on.
pub fn read_file(path: &Path) -> Result<Vec<(Origin, String)>, ImageListError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let unreadable = |message: String| ImageListError::Unreadable { path: path.to_owned(), message };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| unreadable(e.to_string()))?;
    let meta = file.metadata().map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable("not a regular file".into()));
    }
    if meta.len() > IMAGES_FILE_MAX {
        return Err(unreadable(format!("{} bytes, more than the {IMAGES_FILE_MAX} allowed", meta.len())));
    }
    let mut bytes = Vec::new();
    file.take(IMAGES_FILE_MAX + 1).read_to_end(&mut bytes).map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > IMAGES_FILE_MAX {
        return Err(unreadable(format!("more than the {IMAGES_FILE_MAX} bytes allowed")));
    }
    let text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8 text".into()))?;
    Ok(parse_lines(path, &text))
}

/// Largest images file read (a list of ten thousand long references is under 1 MiB).
pub const IMAGES_FILE_MAX: u64 = 1 << 20;

/// The entries of an images file's text.
pub fn parse_lines(path: &Path, text: &str) -> Vec<(Origin, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let content = line.split_once('#').map_or(line, |(before, _)| before).trim();
            (!content.is_empty()).then(|| (Origin::Line(path.to_owned(), i + 1), content.to_owned()))
        })
        .collect()
}

/// Parses every entry, reporting every invalid one; keeps order and duplicates.
pub fn parse_all(entries: Vec<(Origin, String)>) -> Result<Vec<(Origin, String, ImageSpec)>, ImageListError> {
    let mut problems = Vec::new();
    let mut parsed = Vec::with_capacity(entries.len());
    for (origin, text) in entries {
        let entry = match platform::split_entry(&text) {
            Ok(entry) => entry,
            Err(e) => {
                problems.push(format!("{origin}: {e}"));
                continue;
            }
        };
        match Reference::parse(entry.reference) {
            Ok(reference) => {
                let spec = ImageSpec::for_platform(reference, entry.platform);
                let longest = names::longest_name(&spec.archive);
                if longest > names::NAME_MAX {
                    problems.push(format!(
                        "{origin}: {text:?} is too long for an archive name: {} needs file names of \
                         {longest} bytes, the limit is {}",
                        spec.archive.display(),
                        names::NAME_MAX
                    ));
                } else {
                    parsed.push((origin, text, spec));
                }
            }
            Err(e) => problems.push(format!("{origin}: {e}")),
        }
    }
    if problems.is_empty() { Ok(parsed) } else { Err(ImageListError::Invalid(problems)) }
}

/// Validates entries: every invalid reference and every pair of different references that map to
/// one archive is reported. Entries naming the same image as an earlier one are dropped.
pub fn validate(entries: Vec<(Origin, String)>) -> Result<ImageList, ImageListError> {
    let parsed = parse_all(entries)?;
    let mut problems = Vec::new();
    let mut list = ImageList::default();
    let mut by_archive: HashMap<PathBuf, (Origin, Reference)> = HashMap::new();
    let mut by_image: HashMap<String, Reference> = HashMap::new();
    for (origin, text, spec) in parsed {
        match by_archive.get(&spec.archive) {
            // The same archive name and the same image: the platform (part of the name) is too.
            Some((_, first)) if first.canonical() == spec.reference.canonical() => {
                list.duplicates.push((origin.to_string(), text));
            }
            Some((first_origin, first)) => problems.push(format!(
                "{origin}: {} and {first} ({first_origin}) both map to the archive {}",
                spec.reference,
                spec.archive.display()
            )),
            None => {
                let canonical = spec.reference.canonical();
                match by_image.get(&canonical) {
                    Some(first) => list.same_image.push((origin.to_string(), text, first.to_string())),
                    None => drop(by_image.insert(canonical, spec.reference.clone())),
                }
                by_archive.insert(spec.archive.clone(), (origin, spec.reference.clone()));
                list.images.push(spec);
            }
        }
    }
    if problems.is_empty() { Ok(list) } else { Err(ImageListError::Invalid(problems)) }
}

/// Positional arguments followed by the images file's entries.
pub fn entries(arguments: &[String], file: Option<&Path>) -> Result<Vec<(Origin, String)>, ImageListError> {
    let mut entries: Vec<(Origin, String)> =
        arguments.iter().enumerate().map(|(i, a)| (Origin::Argument(i + 1), a.trim().to_owned())).collect();
    if let Some(path) = file {
        entries.extend(read_file(path)?);
    }
    Ok(entries)
}

/// Positional arguments and the images file, read and validated together.
pub fn load(arguments: &[String], file: Option<&Path>) -> Result<ImageList, ImageListError> {
    validate(entries(arguments, file)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn file_syntax() {
        let text =
            "# images\n\n  nginx:1  \nbusybox # trailing comment\n\t#indented comment\nreg.io:5000/a/b:c\n";
        let entries = parse_lines(Path::new("list.txt"), text);
        let texts: Vec<_> = entries.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["nginx:1", "busybox", "reg.io:5000/a/b:c"]);
        assert_eq!(entries[1].0.to_string(), "list.txt:4");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = load(&args(&["Bad", "ok:1", "x//y"]), None).unwrap_err();
        let ImageListError::Invalid(problems) = err else { panic!("{err:?}") };
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].starts_with("argument 1: invalid image reference \"Bad\""), "{}", problems[0]);
        assert!(problems[1].starts_with("argument 3:"), "{}", problems[1]);

        let err = load(&args(&["team/app:1", "other.io/team/app:1", "x.io/team/app:1"]), None).unwrap_err();
        let ImageListError::Invalid(problems) = err else { panic!("{err:?}") };
        assert_eq!(
            problems,
            [
                "argument 2: other.io/team/app:1 and team/app:1 (argument 1) both map to the archive team/app_1.tar",
                "argument 3: x.io/team/app:1 and team/app:1 (argument 1) both map to the archive team/app_1.tar",
            ]
        );
    }

    #[test]
    fn same_image_twice_is_dropped_not_refused() {
        let list = load(&args(&["nginx", "nginx:latest", "alpine:3"]), None).unwrap();
        let names: Vec<_> = list.images.iter().map(|i| i.reference.to_string()).collect();
        assert_eq!(names, ["nginx", "alpine:3"]);
        assert_eq!(list.duplicates, [("argument 2".to_owned(), "nginx:latest".to_owned())]);
        assert!(list.same_image.is_empty());
    }

    #[test]
    fn same_image_under_two_archives_is_kept_and_noted() {
        let list = load(&args(&["nginx", "docker.io/library/nginx:latest"]), None).unwrap();
        let archives: Vec<_> = list.images.iter().map(|i| i.archive.display().to_string()).collect();
        assert_eq!(archives, ["nginx_latest.tar", "library/nginx_latest.tar"]);
        let note = ("argument 2".to_owned(), "docker.io/library/nginx:latest".to_owned(), "nginx".to_owned());
        assert_eq!(list.same_image, [note]);
    }

    #[test]
    fn references_too_long_for_a_file_name_are_refused() {
        let fits = format!("{}:1", "a".repeat(212)); // a…a_1.tar: 218 bytes, + 37 = 255
        let too_long = format!("{}:1", "a".repeat(213));
        assert!(load(&args(&[&fits]), None).is_ok());
        let err = load(&args(&[&fits, &too_long]), None).unwrap_err();
        assert!(err.to_string().starts_with("argument 2: "), "{err}");
        assert!(err.to_string().contains("too long for an archive name"), "{err}");
    }

    #[test]
    fn images_file_must_be_a_small_regular_file() {
        for special in ["/dev/zero", "/dev/null"] {
            let err = load(&[], Some(Path::new(special))).unwrap_err();
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.txt");
        std::fs::File::create(&big).unwrap().set_len(IMAGES_FILE_MAX + 1).unwrap();
        let err = load(&[], Some(&big)).unwrap_err();
        assert!(err.to_string().contains("more than the"), "{err}");
    }

    #[test]
    fn entries_with_a_platform_get_their_own_archive() {
        let list = load(
            &args(&[
                "team/app:1",
                "team/app:1 platform=linux/arm64",
                "team/app:1   platform=linux/arm64/v8",
                "docker.io/team/app:1 platform=linux/amd64",
                "nginx platform=linux/arm",
            ]),
            None,
        )
        .unwrap();
        let names: Vec<_> = list.images.iter().map(|i| i.archive.to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                "team/app_1.tar",
                "team/app_1+linux-arm64.tar",
                "team/app_1+linux-amd64.tar",
                "nginx_latest+linux-arm-v7.tar"
            ]
        );
        assert_eq!(
            list.duplicates,
            [("argument 3".to_owned(), "team/app:1   platform=linux/arm64/v8".to_owned())]
        );
        assert_eq!(list.images[1].platform.as_ref().map(ToString::to_string).as_deref(), Some("linux/arm64"));
        assert_eq!(list.images[0].platform, None);
        assert_eq!(list.images[3].entry(), "nginx platform=linux/arm/v7");

        // The collision check still applies to suffixed names.
        let err = load(
            &args(&["a.io/team/app:1 platform=linux/arm64", "b.io/team/app:1 platform=linux/arm64"]),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "argument 2: b.io/team/app:1 and a.io/team/app:1 (argument 1) both map to the archive team/app_1+linux-arm64.tar"
        );
        let err = load(
            &args(&["app:1 platform=linux/sparc", "app:2 arch=arm64", "Bad platform=linux/arm64"]),
            None,
        )
        .unwrap_err();
        let ImageListError::Invalid(problems) = err else { panic!("{err:?}") };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].starts_with("argument 1: app:1: invalid platform \"linux/sparc\""),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with("argument 2: app:2: unknown option \"arch=arm64\""),
            "{}",
            problems[1]
        );
        assert!(problems[2].starts_with("argument 3: invalid image reference \"Bad\""), "{}", problems[2]);
        // In a file, a comment may follow.
        let entries = parse_lines(Path::new("l"), "app:1 platform=linux/arm64 # the arm build\n");
        assert_eq!(entries[0].1, "app:1 platform=linux/arm64");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = load(&[], Some(Path::new("/nonexistent/images.txt"))).unwrap_err();
        assert!(err.to_string().starts_with("cannot read images file /nonexistent/images.txt"), "{err}");
    }
}
