//! A source's failure, with the image, the operation and a kind callers match: credentials
//! refused, not found, transient (registry or daemon down, rate limited), or other.

use std::fmt;

/// What kind of failure: backoff, messages and metrics differ by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The registry refused the credentials (or asked for some).
    Auth,
    /// The image, tag or platform does not exist.
    NotFound,
    /// Worth retrying soon: a registry or daemon down, a timeout, a rate limit.
    Transient,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Transient => "transient",
            ErrorKind::Other => "other",
        }
    }

    /// Classifies a failure from the HTTP status (if any) and the message a daemon or registry
    /// gave. Pure.
    pub fn classify(status: Option<u16>, message: &str) -> ErrorKind {
        let m = message.to_ascii_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| m.contains(w));
        if matches!(status, Some(401 | 403))
            || any(&["unauthorized", "authentication required", "access denied", "denied:", "no basic auth"])
        {
            ErrorKind::Auth
        } else if any(&[
            "manifest unknown",
            "not found",
            "no such image",
            "does not exist",
            "no matching manifest",
        ]) {
            ErrorKind::NotFound
        } else if matches!(status, Some(429 | 500..=599) | None)
            && any(&[
                "connection refused",
                "connection reset",
                "timeout",
                "timed out",
                "no such host",
                "toomanyrequests",
                "too many requests",
                "service unavailable",
                "bad gateway",
                "eof",
                "tls handshake",
                "network is unreachable",
                "temporary failure",
            ])
        {
            ErrorKind::Transient
        } else if matches!(status, Some(404)) {
            ErrorKind::NotFound
        } else if matches!(status, Some(429 | 502..=504)) {
            ErrorKind::Transient
        } else {
            ErrorKind::Other
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the source was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Pulling the image.
    Pull,
    /// Tagging a digest-pinned pull with the tag its archive promises.
    Tag,
    /// Reading the pulled image's facts.
    Inspect,
    /// Asking the registry for the current digest.
    Resolve,
    /// Exporting the archive.
    Export,
    /// Removing the source's copy.
    Remove,
    /// Repairing the source's incomplete copy.
    Repair,
}

/// A failure of the source, with the image and the source's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceError {
    /// What the source was doing.
    pub operation: Operation,
    /// The image, as given.
    pub image: String,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The source's own message.
    pub message: String,
}

impl SourceError {
    /// A failure of `operation` on `image`, classified from `status` and `message`.
    pub fn new(operation: Operation, image: impl Into<String>, status: Option<u16>, message: String) -> Self {
        let kind = ErrorKind::classify(status, &message);
        SourceError { operation, image: image.into(), kind, message }
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (image, message) = (&self.image, &self.message);
        match self.operation {
            Operation::Pull => write!(f, "pull of {image} failed: {message}"),
            Operation::Tag => write!(f, "tagging {image} failed: {message}"),
            Operation::Inspect => write!(f, "inspecting {image} failed: {message}"),
            Operation::Resolve => {
                write!(f, "asking the registry for the digest of {image} failed: {message}")
            }
            Operation::Export => write!(f, "export of {image} failed: {message}"),
            Operation::Remove => write!(f, "removing {image} from the source failed: {message}"),
            Operation::Repair => write!(f, "repairing {image} in the source failed: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_daemon_and_registry_messages() {
        let cases = [
            (
                Some(500),
                "Head \"https://r/v2/a/manifests/1\": unauthorized: authentication required",
                ErrorKind::Auth,
            ),
            (
                Some(404),
                "pull access denied for x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
                ErrorKind::Auth,
            ),
            (Some(401), "whatever", ErrorKind::Auth),
            (
                Some(404),
                "manifest for r/a:9 not found: manifest unknown: manifest unknown",
                ErrorKind::NotFound,
            ),
            (Some(404), "No such image: a:1", ErrorKind::NotFound),
            (
                Some(500),
                "Get \"http://127.0.0.1:9/v2/\": dial tcp 127.0.0.1:9: connect: connection refused",
                ErrorKind::Transient,
            ),
            (Some(500), "toomanyrequests: You have reached your pull rate limit", ErrorKind::Transient),
            (None, "error trying to connect: timed out", ErrorKind::Transient),
            (Some(503), "overloaded", ErrorKind::Transient),
            (Some(500), "invalid reference format", ErrorKind::Other),
        ];
        for (status, message, kind) in cases {
            assert_eq!(ErrorKind::classify(status, message), kind, "{status:?} {message}");
        }
    }

    #[test]
    fn messages_keep_their_wording() {
        let e = SourceError::new(Operation::Pull, "a:1", Some(404), "manifest unknown".into());
        assert_eq!(e.to_string(), "pull of a:1 failed: manifest unknown");
        assert_eq!(e.kind, ErrorKind::NotFound);
    }
}
