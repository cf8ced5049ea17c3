//! Docker image references: `[domain[:port]/]path[:tag][@digest]`.
//!
//! The grammar follows `github.com/distribution/reference`. Parsing is strict so that every accepted
//! reference maps to a safe archive path: path components are lowercase alphanumerics joined by
//! single separators, so `..`, empty components or absolute paths can never appear.

use std::fmt;

/// Longest repository name (domain and path) Docker accepts.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// Longest tag Docker accepts.
const TAG_LENGTH_MAX: usize = 128;

/// A parsed, valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: Option<String>,
    path: Vec<String>,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A content digest such as `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: &'static str,
    hex: String,
}

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// The rejected input, as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Digest {
    /// Parses `algorithm:hex` with a known algorithm and the exact hex length it implies.
    pub fn parse(s: &str) -> Result<Digest, String> {
        let (algorithm, hex) =
            s.split_once(':').ok_or_else(|| format!("digest {s:?} is not of the form algorithm:hex"))?;
        let (algorithm, len) = match algorithm {
            "sha256" => ("sha256", 64),
            "sha384" => ("sha384", 96),
            "sha512" => ("sha512", 128),
            other => return Err(format!("unsupported digest algorithm {other:?}")),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("{algorithm} digest must be {len} lowercase hex characters"));
        }
        Ok(Digest { algorithm, hex: hex.to_owned() })
    }

    /// The algorithm, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        self.algorithm
    }

    /// The hex-encoded value.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl Reference {
    /// Parses a reference, rejecting anything outside the Docker reference grammar.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        parse(input).map_err(|reason| ReferenceError { input: input.to_owned(), reason })
    }

    /// The registry domain (with port) when the reference names one.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The repository path components after the domain.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// The tag, if one was given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if one was given.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The repository as written: `[domain/]path`.
    pub fn repository(&self) -> String {
        let path = self.path.join("/");
        match &self.domain {
            Some(domain) => format!("{domain}/{path}"),
            None => path,
        }
    }

    /// What the daemon's pull endpoint takes as `tag`: the digest when there is one (the image is
    /// pulled by content), else the tag, else `latest`.
    pub fn pull_tag(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The name under which the pulled image is exported: `repository:tag` when a tag is known
    /// (so `docker load` restores the tag), else `repository@digest`.
    pub fn export_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{}:{tag}", self.repository()),
            (None, Some(digest)) => format!("{}@{digest}", self.repository()),
            (None, None) => format!("{}:latest", self.repository()),
        }
    }

    /// Whether the image is pulled by digest but must carry a tag in its archive, so the tag has to
    /// be applied locally after the pull (`name:tag@digest`).
    pub fn needs_local_tag(&self) -> bool {
        self.tag.is_some() && self.digest.is_some()
    }

    /// The fully qualified form used to detect duplicates: `docker.io/library/nginx:latest` for
    /// `nginx`, like Docker's own normalisation.
    pub fn canonical(&self) -> String {
        let (domain, mut path) = match self.domain.as_deref() {
            None | Some("index.docker.io") => ("docker.io", self.path.join("/")),
            Some(domain) => (domain, self.path.join("/")),
        };
        if domain == "docker.io" && self.path.len() == 1 {
            path = format!("library/{path}");
        }
        let mut out = format!("{domain}/{path}");
        match (&self.tag, &self.digest) {
            (None, None) => out.push_str(":latest"),
            (tag, digest) => {
                if let Some(tag) = tag {
                    out.push(':');
                    out.push_str(tag);
                }
                if let Some(digest) = digest {
                    out.push('@');
                    out.push_str(&digest.to_string());
                }
            }
        }
        out
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn parse(input: &str) -> Result<Reference, String> {
    if input.is_empty() {
        return Err("empty reference".into());
    }
    if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains the character {c:?}"));
    }

    let (name_and_tag, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(Digest::parse(digest)?)),
        None => (input, None),
    };

    // A tag follows the last ':' only if no '/' comes after it (a ':' before a '/' is a port).
    let (name, tag) = match name_and_tag.rfind(':') {
        Some(i) if !name_and_tag[i + 1..].contains('/') => (&name_and_tag[..i], Some(&name_and_tag[i + 1..])),
        _ => (name_and_tag, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if name.is_empty() {
        return Err("missing repository name".into());
    }
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(format!("repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"));
    }

    // Docker's rule: the first component is a registry domain if it contains '.' or ':', is
    // `localhost`, or has uppercase letters; otherwise the whole name is a Docker Hub path.
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            check_domain(first)?;
            (Some(first.to_owned()), rest)
        }
        _ => (None, name),
    };

    let components: Vec<String> = path.split('/').map(str::to_owned).collect();
    for component in &components {
        check_path_component(component)?;
    }

    Ok(Reference { domain, path: components, tag: tag.map(str::to_owned), digest })
}

/// `[\w][\w.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.first() {
        None => return Err("empty tag".into()),
        Some(&b) if !word(b) => {
            return Err(format!("tag {tag:?} must start with a letter, digit or underscore"));
        }
        _ => {}
    }
    if bytes.len() > TAG_LENGTH_MAX {
        return Err(format!("tag {tag:?} is longer than {TAG_LENGTH_MAX} characters"));
    }
    if let Some(c) = tag.chars().find(|&c| !(c.is_ascii_alphanumeric() || "_.-".contains(c))) {
        return Err(format!("tag {tag:?} contains the character {c:?}"));
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("empty path component (double or trailing '/')".into());
    }
    if let Some(c) = component.chars().find(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository name must be lowercase (found {c:?} in {component:?})"));
    }
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return Err(format!(
            "path component {component:?} must start and end with a lowercase letter or digit"
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return Err(format!("path component {component:?} has the invalid separator {separator:?}"));
        }
    }
    Ok(())
}

/// A host name (labels of alphanumerics and inner hyphens), an IPv4 address or a bracketed IPv6
/// address, optionally followed by `:port`.
fn check_domain(domain: &str) -> Result<(), String> {
    let invalid = || format!("invalid registry domain {domain:?}");
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(invalid)?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid());
        }
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |label: &str| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(invalid());
        }
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("invalid port in registry domain {domain:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parts(s: &str) -> (Option<String>, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap_or_else(|e| panic!("{e}"));
        (
            r.domain().map(str::to_owned),
            r.path().join("/"),
            r.tag().map(str::to_owned),
            r.digest().map(ToString::to_string),
        )
    }

    #[test]
    fn splits_domain_path_tag_digest() {
        assert_eq!(parts("nginx"), (None, "nginx".into(), None, None));
        assert_eq!(parts("nginx:1.21.0"), (None, "nginx".into(), Some("1.21.0".into()), None));
        assert_eq!(
            parts("registry.local:5000/team/app:2.0"),
            (Some("registry.local:5000".into()), "team/app".into(), Some("2.0".into()), None)
        );
        assert_eq!(
            parts("registry.local:5000/team/app"),
            (Some("registry.local:5000".into()), "team/app".into(), None, None)
        );
        assert_eq!(
            parts("localhost/app:1"),
            (Some("localhost".into()), "app".into(), Some("1".into()), None)
        );
        assert_eq!(parts("[::1]:5000/app"), (Some("[::1]:5000".into()), "app".into(), None, None));
        let with_digest = format!("busybox:1.36@sha256:{HEX}");
        assert_eq!(
            parts(&with_digest),
            (None, "busybox".into(), Some("1.36".into()), Some(format!("sha256:{HEX}")))
        );
        assert_eq!(
            parts("a/b/c/d_e.f__g-h---i:x"),
            (None, "a/b/c/d_e.f__g-h---i".into(), Some("x".into()), None)
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["nginx", "nginx:1", "harbor.example.com/hub/selenium/standalone-firefox:4.23"] {
            assert_eq!(Reference::parse(s).unwrap().to_string(), s);
        }
        let digested = format!("127.0.0.1:5000/a/b:t@sha256:{HEX}");
        assert_eq!(Reference::parse(&digested).unwrap().to_string(), digested);
    }

    #[test]
    fn canonical_form_matches_docker_normalisation() {
        let canon = |s: &str| Reference::parse(s).unwrap().canonical();
        assert_eq!(canon("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(canon("nginx:latest"), canon("docker.io/library/nginx"));
        assert_eq!(canon("index.docker.io/library/nginx"), canon("nginx"));
        assert_eq!(canon("user/app:1"), "docker.io/user/app:1");
        assert_ne!(canon("registry.local/nginx"), canon("nginx"));
    }

    #[test]
    fn pull_and_export_names() {
        let r = Reference::parse("nginx").unwrap();
        assert_eq!((r.pull_tag(), r.export_name()), ("latest".into(), "nginx:latest".into()));
        let r = Reference::parse(&format!("reg:5000/app:1.0@sha256:{HEX}")).unwrap();
        assert_eq!(r.pull_tag(), format!("sha256:{HEX}"));
        assert_eq!(r.export_name(), "reg:5000/app:1.0");
        assert!(r.needs_local_tag());
        let r = Reference::parse(&format!("app@sha256:{HEX}")).unwrap();
        assert_eq!(r.export_name(), format!("app@sha256:{HEX}"));
        assert!(!r.needs_local_tag());
    }

    #[test]
    fn rejects_invalid_references() {
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = "a".repeat(256);
        let cases = [
            "",
            " nginx",
            "nginx latest",
            "Nginx",
            "library/Nginx",
            "../etc/passwd",
            "a/../b",
            "a//b",
            "/abs",
            "a/",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "nginx:",
            "nginx:-tag",
            "nginx:.tag",
            "nginx:ta/g",
            "nginx:t@g",
            "nginx@sha256:abc",
            "nginx@md5:0123456789abcdef0123456789abcdef",
            "nginx@",
            "host:port/app",
            "exa_mple.com/app",
            "-example.com/app",
            "registry:123456/app",
            "[zz]:5000/app",
            "app:tag\n",
            long_tag.as_str(),
            long_name.as_str(),
        ];
        for case in cases {
            assert!(Reference::parse(case).is_err(), "accepted {case:?}");
        }
        let upper_digest = format!("a@sha256:{}", HEX.to_uppercase());
        assert!(Reference::parse(&upper_digest).is_err());
    }

    #[test]
    fn error_names_the_input() {
        let err = Reference::parse("a//b").unwrap_err();
        assert_eq!(err.input, "a//b");
        assert!(err.to_string().contains("\"a//b\""), "{err}");
    }
}
