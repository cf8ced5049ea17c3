//! Image platforms (`os/arch[/variant]`): parsing, normalisation, which platform a host can run,
//! the `platform=` option of an image-list entry and the archive name suffix it implies.
//!
//! Normalisation follows containerd's `platforms` package, so that the spellings people use agree:
//! `x86_64` is `amd64`, `aarch64` and `arm64/v8` are `arm64`, `armhf` and plain `arm` are `arm/v7`.
//!
//! ## The image-list grammar
//!
//! An entry (an `IMAGE` argument or a line of an images file) is a reference followed by options,
//! separated by whitespace: `REF [platform=OS/ARCH[/VARIANT]]`. A reference never contains
//! whitespace, so the split is unambiguous. `platform` is the only option; an unknown option, an
//! option given twice or an invalid platform is an error naming the entry.
//!
//! ## Archive names
//!
//! `--platform` (one platform for the whole list) changes no name. An entry with its own
//! `platform=` gets `+<os>-<arch>[-<variant>]` before `.tar`: `team/app_1.0+linux-arm64.tar`. A `+`
//! never occurs in a name without a platform (tags and paths cannot contain it), so an entry with a
//! platform never collides with one without, and the same reference listed for two platforms gets
//! two names. The name depends on the entry alone, never on the rest of the list or the daemon.

use std::fmt;

/// Operating systems Go (and so Docker) knows, for catching typos early.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];

/// Architectures Go (and so Docker) knows.
const KNOWN_ARCH: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64", "ppc64le",
    "riscv64", "s390x", "wasm",
];

/// A normalised platform.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// Why a platform is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {input:?}: {reason}")]
pub struct PlatformError {
    /// The rejected input, as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Platform {
    /// Parses `os/arch[/variant]`, normalising aliases (case-insensitive).
    pub fn parse(input: &str) -> Result<Platform, PlatformError> {
        let error = |reason: String| PlatformError { input: input.to_owned(), reason };
        let lower = input.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(error("expected os/arch or os/arch/variant, e.g. linux/arm64".into()));
        }
        for part in &parts {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(error(format!("{part:?} is not a platform component")));
            }
        }
        let os = match parts[0] {
            "macos" => "darwin",
            other => other,
        };
        if !KNOWN_OS.contains(&os) {
            return Err(error(format!("unknown operating system {os:?}")));
        }
        let platform = Platform::from_parts(os, parts[1], parts.get(2).copied());
        if !KNOWN_ARCH.contains(&platform.architecture.as_str()) {
            return Err(error(format!(
                "unknown architecture {:?} (known: {})",
                parts[1],
                KNOWN_ARCH.join(", ")
            )));
        }
        Ok(platform)
    }

    /// A platform from the fields of an image config or a daemon's version answer, normalised
    /// the same way (unknown names are kept as they are: this is for comparing, not validating).
    pub fn from_parts(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = os.to_ascii_lowercase();
        let variant = variant.map(str::to_ascii_lowercase).filter(|v| !v.is_empty());
        let (architecture, variant) = match (architecture.to_ascii_lowercase().as_str(), variant) {
            ("i386" | "i686", _) => ("386".to_owned(), None),
            ("x86_64" | "x86-64" | "amd64", variant) => ("amd64".to_owned(), variant.filter(|v| v != "v1")),
            ("aarch64" | "arm64", variant) => ("arm64".to_owned(), variant.filter(|v| v != "v8" && v != "8")),
            ("armhf", _) => ("arm".to_owned(), Some("v7".to_owned())),
            ("armel", _) => ("arm".to_owned(), Some("v6".to_owned())),
            ("arm", variant) => ("arm".to_owned(), Some(arm_variant(variant.as_deref()))),
            (other, variant) => (other.to_owned(), variant),
        };
        Platform { os, architecture, variant }
    }

    /// The operating system, e.g. `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The architecture, e.g. `arm64`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The variant, e.g. `v7` for `arm`.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// The suffix an entry with this platform adds to its archive name: `linux-arm64`,
    /// `linux-arm-v7` (only characters that are safe in a file name).
    pub fn name_suffix(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}-{}-{variant}", self.os, self.architecture),
            None => format!("{}-{}", self.os, self.architecture),
        }
    }

    /// Whether a host of platform `self` runs images of platform `image` natively: the same OS,
    /// and the same architecture or one the host's CPU also executes (amd64 runs 386, arm64 runs
    /// arm, arm/v7 runs v6 and v5), as containerd's default platform matcher decides.
    pub fn runs(&self, image: &Platform) -> bool {
        if self.os != image.os {
            return false;
        }
        match (self.architecture.as_str(), image.architecture.as_str()) {
            ("amd64", "amd64") => match (self.variant(), image.variant()) {
                (Some(host), Some(wanted)) => wanted <= host,
                _ => true,
            },
            ("amd64", "386") | ("arm64", "arm64") | ("arm64", "arm") => true,
            ("arm", "arm") => arm_level(image.variant()) <= arm_level(self.variant()),
            (host, wanted) => host == wanted && self.variant == image.variant,
        }
    }
}

/// `arm` without a variant means v7 (containerd's default); `7` means `v7`.
fn arm_variant(variant: Option<&str>) -> String {
    match variant {
        None => "v7".to_owned(),
        Some(v) if v.starts_with('v') => v.to_owned(),
        Some(v) => format!("v{v}"),
    }
}

fn arm_level(variant: Option<&str>) -> u32 {
    variant.and_then(|v| v.strip_prefix('v')).and_then(|n| n.parse().ok()).unwrap_or(7)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Platform({self})")
    }
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

/// An image-list entry split into its reference text and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOptions<'a> {
    /// The reference, not yet parsed.
    pub reference: &'a str,
    /// `platform=`, if given.
    pub platform: Option<Platform>,
}

/// Splits an entry `REF [platform=OS/ARCH[/VARIANT]]` (see the module documentation). When a
/// later word is no `key=value` option at all, the whole entry is handed back as the reference,
/// so the reference grammar reports it (`nginx latest` is a bad reference, not a bad option).
pub fn split_entry(entry: &str) -> Result<EntryOptions<'_>, String> {
    let trimmed = entry.trim();
    if trimmed.split_whitespace().skip(1).any(|word| !word.contains('=')) {
        return Ok(EntryOptions { reference: trimmed, platform: None });
    }
    let mut words = trimmed.split_whitespace();
    let reference = words.next().ok_or_else(|| "empty entry".to_owned())?;
    let mut platform = None;
    for word in words {
        match word.split_once('=') {
            Some(("platform", value)) => {
                if platform.is_some() {
                    return Err(format!("{reference}: platform= is given twice"));
                }
                platform = Some(Platform::parse(value).map_err(|e| format!("{reference}: {e}"))?);
            }
            _ => {
                return Err(format!(
                    "{reference}: unknown option {word:?} (an entry is `REF [platform=OS/ARCH[/VARIANT]]`)"
                ));
            }
        }
    }
    Ok(EntryOptions { reference, platform })
}

/// Inserts `+<platform suffix>` before the extension of an archive path (see the module
/// documentation).
pub fn suffixed_archive_path(path: &std::path::Path, platform: &Platform) -> std::path::PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}+{}.{}", platform.name_suffix(), ext.to_string_lossy()),
        None => format!("{stem}+{}", platform.name_suffix()),
    };
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_and_normalises() {
        let table = [
            ("linux/amd64", "linux/amd64"),
            ("LINUX/AMD64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/i386", "linux/386"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("windows/amd64", "windows/amd64"),
            (" linux/s390x ", "linux/s390x"),
        ];
        for (input, expected) in table {
            assert_eq!(p(input).to_string(), expected, "{input}");
        }
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        let arm = p("linux/arm/v7");
        assert_eq!((arm.os(), arm.architecture(), arm.variant()), ("linux", "arm", Some("v7")));
    }

    #[test]
    fn rejects_what_is_not_a_platform() {
        for bad in
            ["", "linux", "amd64", "linux/", "/amd64", "linux/amd64/v8/x", "linux/amd46", "linus/amd64"]
        {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["linux/../x", "linux/amd 64", "linux/amd64/v 8", "linux/a.b"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
        let err = Platform::parse("linux/amd46").unwrap_err().to_string();
        assert!(err.starts_with("invalid platform \"linux/amd46\": unknown architecture \"amd46\""), "{err}");
    }

    #[test]
    fn from_image_config_fields() {
        assert_eq!(Platform::from_parts("linux", "arm64", Some("v8")), p("linux/arm64"));
        assert_eq!(Platform::from_parts("linux", "arm", None), p("linux/arm/v7"));
        assert_eq!(Platform::from_parts("linux", "amd64", Some("")), p("linux/amd64"));
        assert_eq!(Platform::from_parts("Linux", "x86_64", None), p("linux/amd64"));
    }

    #[test]
    fn what_a_host_runs() {
        let yes = [
            ("linux/amd64", "linux/amd64"),
            ("linux/amd64", "linux/386"),
            ("linux/amd64", "linux/amd64/v2"),
            ("linux/amd64/v3", "linux/amd64/v2"),
            ("linux/arm64", "linux/arm64"),
            ("linux/arm64", "linux/arm/v7"),
            ("linux/arm64", "linux/arm/v6"),
            ("linux/arm/v7", "linux/arm/v6"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/s390x", "linux/s390x"),
        ];
        for (host, image) in yes {
            assert!(p(host).runs(&p(image)), "{host} runs {image}");
        }
        let no = [
            ("linux/amd64", "linux/arm64"),
            ("linux/arm64", "linux/amd64"),
            ("linux/amd64/v2", "linux/amd64/v3"),
            ("linux/arm/v6", "linux/arm/v7"),
            ("linux/arm/v7", "linux/arm64"),
            ("linux/amd64", "windows/amd64"),
            ("linux/386", "linux/amd64"),
        ];
        for (host, image) in no {
            assert!(!p(host).runs(&p(image)), "{host} does not run {image}");
        }
    }

    #[test]
    fn entry_grammar() {
        let e = split_entry("nginx:1.27").unwrap();
        assert_eq!((e.reference, e.platform), ("nginx:1.27", None));
        let e = split_entry("reg.io:5000/a/b:c   platform=linux/arm64").unwrap();
        assert_eq!((e.reference, e.platform), ("reg.io:5000/a/b:c", Some(p("linux/arm64"))));
        let e = split_entry("a\tplatform=Linux/ARM/v6").unwrap();
        assert_eq!(e.platform, Some(p("linux/arm/v6")));

        let err = |s: &str| split_entry(s).unwrap_err();
        assert_eq!(err("a platform=linux/amd64 platform=linux/arm64"), "a: platform= is given twice");
        assert!(err("a platfrom=linux/arm64").starts_with("a: unknown option \"platfrom=linux/arm64\""));
        let e = split_entry("nginx latest").unwrap();
        assert_eq!((e.reference, e.platform), ("nginx latest", None), "left to the reference grammar");
        assert!(err("a platform=").starts_with("a: invalid platform \"\""));
        assert!(err("a platform=linux/sparc").contains("unknown architecture \"sparc\""));
        assert_eq!(err("   "), "empty entry");
    }

    #[test]
    fn suffixed_names() {
        let name = |path: &str, platform: &str| {
            suffixed_archive_path(Path::new(path), &p(platform)).to_string_lossy().into_owned()
        };
        assert_eq!(name("team/app_1.0.tar", "linux/arm64"), "team/app_1.0+linux-arm64.tar");
        assert_eq!(name("app_latest.tar", "linux/arm"), "app_latest+linux-arm-v7.tar");
        assert_eq!(name("app_1.2.3.tar", "linux/amd64"), "app_1.2.3+linux-amd64.tar");
        assert_ne!(name("app_1.tar", "linux/arm64"), name("app_1.tar", "linux/amd64"));
    }
}
