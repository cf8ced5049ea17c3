//! Registry hosts, and which keys of a Docker config file name them, the way the Docker CLI
//! matches them.
//!
//! The CLI looks a registry up by the reference's domain (`ghcr.io`, `registry.local:5000`), or
//! by `https://index.docker.io/v1/` for Docker Hub images. A key is used if it is exactly that,
//! or if it names the same host once a `http://`/`https://` scheme and any path are removed
//! (`https://ghcr.io/v2/` matches `ghcr.io`). Host names compare case-insensitively. For Docker
//! Hub, keys naming `index.docker.io`, `docker.io` or `registry-1.docker.io` are accepted too
//! (tools such as `kubectl create secret docker-registry --docker-server=docker.io` write them).

use std::fmt;

use crate::image::reference::Reference;

/// Docker Hub's registry name in references.
pub const DOCKER_HUB: &str = "docker.io";

/// The key `docker login` writes for Docker Hub.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// Host names that mean Docker Hub in a config key.
const DOCKER_HUB_HOSTS: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The registry a reference is pulled from: `host[:port]`, lowercase, `docker.io` for Docker Hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost(String);

impl RegistryHost {
    /// The registry of `reference` (Docker Hub when it names no domain).
    pub fn of(reference: &Reference) -> RegistryHost {
        match reference.domain() {
            None => RegistryHost(DOCKER_HUB.to_owned()),
            Some(domain) => RegistryHost::new(domain),
        }
    }

    /// A registry host from a domain as written in a reference (`index.docker.io` is Docker Hub).
    pub fn new(domain: &str) -> RegistryHost {
        let host = domain.to_ascii_lowercase();
        if host == "index.docker.io" { RegistryHost(DOCKER_HUB.to_owned()) } else { RegistryHost(host) }
    }

    /// `host[:port]`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.0 == DOCKER_HUB
    }

    /// The key `docker login` writes for this registry.
    pub fn auth_key(&self) -> &str {
        if self.is_docker_hub() { DOCKER_HUB_AUTH_KEY } else { &self.0 }
    }

    /// Whether a config key names exactly the key `docker login` writes for this registry.
    pub fn is_exact_key(&self, key: &str) -> bool {
        key == self.auth_key()
    }

    /// Whether a config key names this registry once scheme and path are removed.
    pub fn matches_key(&self, key: &str) -> bool {
        let host = key_host(key).to_ascii_lowercase();
        if self.is_docker_hub() { DOCKER_HUB_HOSTS.contains(&host.as_str()) } else { host == self.0 }
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host part of a config key: without `http://` or `https://` and anything from the first `/`
/// (the Docker CLI's `ConvertToHostname`).
pub fn key_host(key: &str) -> &str {
    let stripped = key.strip_prefix("http://").or_else(|| key.strip_prefix("https://")).unwrap_or(key);
    stripped.split_once('/').map_or(stripped, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(reference: &str) -> RegistryHost {
        RegistryHost::of(&Reference::parse(reference).unwrap())
    }

    #[test]
    fn registry_of_a_reference() {
        assert_eq!(host("nginx").as_str(), "docker.io");
        assert_eq!(host("library/nginx:1").as_str(), "docker.io");
        assert_eq!(host("docker.io/library/nginx").as_str(), "docker.io");
        assert_eq!(host("index.docker.io/library/nginx").as_str(), "docker.io");
        assert_eq!(host("ghcr.io/org/app:1").as_str(), "ghcr.io");
        assert_eq!(host("Registry.Local:5000/app").as_str(), "registry.local:5000");
        assert_eq!(host("localhost/app").as_str(), "localhost");
        assert!(host("nginx").is_docker_hub());
        assert!(!host("ghcr.io/a").is_docker_hub());
    }

    #[test]
    fn key_hosts_like_the_docker_cli() {
        assert_eq!(key_host("ghcr.io"), "ghcr.io");
        assert_eq!(key_host("https://ghcr.io"), "ghcr.io");
        assert_eq!(key_host("http://reg:5000/v2/"), "reg:5000");
        assert_eq!(key_host("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(key_host("reg:5000/some/path"), "reg:5000");
        assert_eq!(key_host("ftp://x"), "ftp:");
    }

    #[test]
    fn which_keys_match() {
        let ghcr = host("ghcr.io/org/app");
        assert!(ghcr.is_exact_key("ghcr.io"));
        for key in ["ghcr.io", "https://ghcr.io", "https://ghcr.io/v2/", "http://GHCR.io", "GHCR.IO"] {
            assert!(ghcr.matches_key(key), "{key}");
        }
        for key in ["ghcr.io:443", "docker.pkg.github.com", "https://index.docker.io/v1/", "io"] {
            assert!(!ghcr.matches_key(key), "{key}");
        }
        let local = host("127.0.0.1:5001/a");
        assert!(local.matches_key("127.0.0.1:5001") && local.matches_key("http://127.0.0.1:5001/"));
        assert!(!local.matches_key("127.0.0.1") && !local.matches_key("127.0.0.1:5000"));

        let hub = host("nginx");
        assert_eq!(hub.auth_key(), "https://index.docker.io/v1/");
        assert!(hub.is_exact_key("https://index.docker.io/v1/"));
        for key in
            ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "https://registry-1.docker.io"]
        {
            assert!(hub.matches_key(key), "{key}");
        }
        assert!(!hub.matches_key("ghcr.io") && !hub.matches_key("hub.docker.com"));
    }
}
