//! Registry credentials from a Docker config file (`~/.docker/config.json`, or a Kubernetes
//! `kubernetes.io/dockerconfigjson` Secret): parsing and lookup by registry;
//! [`super::keyring`] re-reads the file at each pass.
//!
//! Supported in `auths`: `auth` (base64 of `user:password`), `username` + `password`,
//! `identitytoken` (an OAuth refresh token, with the user name from `auth` or `username`) and
//! `registrytoken` (a bearer token). A registry covered by `credHelpers` or `credsStore` needs an
//! external `docker-credential-*` program, which cannot run in a scratch image: the lookup says so
//! for that registry. Inline `auths` credentials for a registry are used even when a helper also
//! covers it (the helper could not run anyway).
//!
//! Secrets never leave this module in a printable form: [`Secret`] and [`Credentials`] redact
//! themselves in `Debug`, and errors name files and keys, never values.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde_json::{Map, Value};

use super::host::{RegistryHost, key_host};

/// A config file larger than this is refused (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A secret string: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (from `auth` or `username`/`password`).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// An OAuth refresh token (`identitytoken`), exchanged at the registry's token service.
    IdentityToken {
        /// The user name stored beside it, if any.
        username: Option<String>,
        /// The refresh token.
        token: Secret,
    },
    /// A bearer token sent to the registry as is (`registrytoken`).
    RegistryToken {
        /// The token.
        token: Secret,
    },
}

impl Credentials {
    /// What kind of credentials these are, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Credentials::Basic { .. } => "a user name and password",
            Credentials::IdentityToken { .. } => "an identity token",
            Credentials::RegistryToken { .. } => "a registry token",
        }
    }

    /// The user name, if any.
    pub fn username(&self) -> Option<&str> {
        match self {
            Credentials::Basic { username, .. } => Some(username),
            Credentials::IdentityToken { username, .. } => username.as_deref(),
            Credentials::RegistryToken { .. } => None,
        }
    }

    /// User name and password for HTTP basic authentication.
    pub fn basic(&self) -> Option<(&str, &str)> {
        match self {
            Credentials::Basic { username, password } => Some((username, password.expose())),
            _ => None,
        }
    }

    /// The refresh token for an OAuth2 token request (`grant_type=refresh_token`).
    pub fn refresh_token(&self) -> Option<&str> {
        match self {
            Credentials::IdentityToken { token, .. } => Some(token.expose()),
            _ => None,
        }
    }

    /// A bearer token to send as is.
    pub fn bearer(&self) -> Option<&str> {
        match self {
            Credentials::RegistryToken { token } => Some(token.expose()),
            _ => None,
        }
    }

    /// The value of the Docker Engine API's `X-Registry-Auth` header for `registry`: URL-safe
    /// base64 of the JSON auth config, as the Docker CLI sends it.
    pub fn x_registry_auth(&self, registry: &RegistryHost) -> String {
        let mut json = Map::new();
        if let Some(username) = self.username() {
            json.insert("username".into(), username.into());
        }
        match self {
            Credentials::Basic { password, .. } => {
                json.insert("password".into(), password.expose().into());
            }
            Credentials::IdentityToken { token, .. } => {
                json.insert("identitytoken".into(), token.expose().into());
            }
            Credentials::RegistryToken { token } => {
                json.insert("registrytoken".into(), token.expose().into());
            }
        }
        json.insert("serveraddress".into(), registry.auth_key().into());
        URL_SAFE.encode(Value::Object(json).to_string())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => {
                f.debug_struct("Basic").field("username", username).field("password", &"<redacted>").finish()
            }
            Credentials::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            Credentials::RegistryToken { .. } => {
                f.debug_struct("RegistryToken").field("token", &"<redacted>").finish()
            }
        }
    }
}

/// Problems with the Docker config file. Messages name the file and the key, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("the Docker config file {} does not exist", .path.display())]
    Missing { path: PathBuf },
    #[error("cannot read the Docker config file {}: {message}", .path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("malformed Docker config file {}: {reason}", .path.display())]
    Malformed { path: PathBuf, reason: String },
}

/// What a Docker config file says about one registry's credentials: one `auths` entry, or the
/// helper that would hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    path: PathBuf,
    /// `auths` keys with their credentials (`None` for an entry without any, e.g. `{}` written
    /// beside a `credsStore`), sorted by key.
    auths: BTreeMap<String, Option<Credentials>>,
    creds_store: Option<String>,
    cred_helpers: BTreeMap<String, String>,
}

impl DockerConfig {
    /// Parses the file's content. `path` is only used in messages and lookups.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<DockerConfig, CredentialsError> {
        let malformed = |reason: String| CredentialsError::Malformed { path: path.to_owned(), reason };
        let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8 text".into()))?;
        let mut config = DockerConfig {
            path: path.to_owned(),
            auths: BTreeMap::new(),
            creds_store: None,
            cred_helpers: BTreeMap::new(),
        };
        if text.trim().is_empty() {
            return Ok(config); // the Docker CLI treats an empty file as an empty config
        }
        // Parsed as an untyped value first: serde_json's syntax errors give a position only,
        // while typed decoding errors would quote the offending value (possibly a secret).
        let value: Value = serde_json::from_str(text).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let Value::Object(top) = value else { return Err(malformed("not a JSON object".into())) };
        if let Some(auths) = top.get("auths").filter(|v| !v.is_null()) {
            let Value::Object(auths) = auths else {
                return Err(malformed("`auths` is not an object".into()));
            };
            for (key, entry) in auths {
                let credentials = parse_entry(key, entry).map_err(&malformed)?;
                config.auths.insert(key.clone(), credentials);
            }
        }
        match top.get("credsStore") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => config.creds_store = Some(s.clone()),
            Some(_) => return Err(malformed("`credsStore` is not a string".into())),
        }
        if let Some(helpers) = top.get("credHelpers").filter(|v| !v.is_null()) {
            let Value::Object(helpers) = helpers else {
                return Err(malformed("`credHelpers` is not an object".into()));
            };
            for (key, helper) in helpers {
                let Value::String(helper) = helper else {
                    return Err(malformed(format!("credHelpers.{key:?} is not a string")));
                };
                config.cred_helpers.insert(key.clone(), helper.clone());
            }
        }
        Ok(config)
    }

    /// Reads and parses the file at `path` (blocking).
    pub fn read(path: &Path) -> Result<DockerConfig, CredentialsError> {
        use std::io::Read;
        let unreadable = |e: std::io::Error| CredentialsError::Unreadable {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CredentialsError::Missing { path: path.to_owned() },
            _ => unreadable(e),
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(CredentialsError::Malformed {
                path: path.to_owned(),
                reason: format!("larger than {} MiB", MAX_CONFIG_BYTES >> 20),
            });
        }
        DockerConfig::parse(path, &bytes)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many `auths` entries hold credentials.
    pub fn credential_count(&self) -> usize {
        self.auths.values().filter(|c| c.is_some()).count()
    }

    /// The `credsStore` helper, if set.
    pub fn creds_store(&self) -> Option<&str> {
        self.creds_store.as_deref()
    }

    /// `credHelpers` entries (registry key, helper) that no inline `auths` entry backs: their
    /// registries get no credentials here.
    pub fn unusable_helpers(&self) -> Vec<(&str, &str)> {
        self.cred_helpers
            .iter()
            .filter(|(key, _)| self.inline_for(&RegistryHost::new(key_host(key))).is_none())
            .map(|(key, helper)| (key.as_str(), helper.as_str()))
            .collect()
    }

    /// The inline credentials for `registry`: the exact key first, then the first key (in sorted
    /// order) naming the same host.
    fn inline_for(&self, registry: &RegistryHost) -> Option<(&str, &Credentials)> {
        let with_credentials = |matches: &dyn Fn(&str) -> bool| {
            self.auths
                .iter()
                .filter(|(key, _)| matches(key))
                .find_map(|(key, c)| c.as_ref().map(|c| (key.as_str(), c)))
        };
        with_credentials(&|key| registry.is_exact_key(key))
            .or_else(|| with_credentials(&|key| registry.matches_key(key)))
    }

    /// What this file holds for `registry`.
    pub fn lookup(&self, registry: &RegistryHost) -> Lookup {
        if let Some((key, credentials)) = self.inline_for(registry) {
            return Lookup::Found {
                registry: registry.clone(),
                credentials: credentials.clone(),
                key: key.to_owned(),
                file: self.path.clone(),
            };
        }
        let helper = self
            .cred_helpers
            .iter()
            .find(|(key, _)| registry.is_exact_key(key))
            .or_else(|| self.cred_helpers.iter().find(|(key, _)| registry.matches_key(key)));
        if let Some((_, helper)) = helper {
            return Lookup::Helper {
                registry: registry.clone(),
                helper: helper.clone(),
                setting: "credHelpers",
                file: self.path.clone(),
            };
        }
        if let Some(store) = &self.creds_store {
            return Lookup::Helper {
                registry: registry.clone(),
                helper: store.clone(),
                setting: "credsStore",
                file: self.path.clone(),
            };
        }
        Lookup::Missing { registry: registry.clone(), file: Some(self.path.clone()) }
    }
}

/// One `auths` entry. The Docker CLI's rules: `auth` overrides `username`/`password`; an
/// identity token comes with the user name only; a registry token needs nothing else.
fn parse_entry(key: &str, entry: &Value) -> Result<Option<Credentials>, String> {
    let Value::Object(fields) = entry else { return Err(format!("auths.{key:?} is not an object")) };
    let field = |name: &str| -> Result<Option<&str>, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("auths.{key:?}.{name} is not a string")),
        }
    };
    let (mut username, mut password) = (field("username")?.map(str::to_owned), field("password")?);
    let decoded;
    if let Some(auth) = field("auth")? {
        let bad = || format!("auths.{key:?}.auth is not the base64 encoding of `user:password`");
        let bytes = STANDARD.decode(auth.trim()).map_err(|_| bad())?;
        decoded = String::from_utf8(bytes).map_err(|_| bad())?;
        let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
        username = Some(user.to_owned()).filter(|u| !u.is_empty());
        password = Some(pass).filter(|p| !p.is_empty());
    }
    if let Some(token) = field("registrytoken")? {
        return Ok(Some(Credentials::RegistryToken { token: Secret::new(token) }));
    }
    if let Some(token) = field("identitytoken")? {
        return Ok(Some(Credentials::IdentityToken { username, token: Secret::new(token) }));
    }
    match (username, password) {
        (Some(username), Some(password)) => {
            Ok(Some(Credentials::Basic { username, password: Secret::new(password) }))
        }
        (None, None) => Ok(None),
        (Some(_), None) => Err(format!("auths.{key:?} has a user name but no password")),
        (None, Some(_)) => Err(format!("auths.{key:?} has a password but no user name")),
    }
}

/// What is known about one registry's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Credentials were found.
    Found {
        /// The registry.
        registry: RegistryHost,
        /// The credentials.
        credentials: Credentials,
        /// The `auths` key they came from.
        key: String,
        /// The config file.
        file: PathBuf,
    },
    /// The registry is covered by a credential helper, which cannot run here.
    Helper {
        /// The registry.
        registry: RegistryHost,
        /// The helper's name (`docker-credential-<helper>`).
        helper: String,
        /// `credHelpers` or `credsStore`.
        setting: &'static str,
        /// The config file.
        file: PathBuf,
    },
    /// No credentials: none in the file, or no file.
    Missing {
        /// The registry.
        registry: RegistryHost,
        /// The config file, if there is one.
        file: Option<PathBuf>,
    },
}

impl Lookup {
    /// The credentials, if found.
    pub fn credentials(&self) -> Option<&Credentials> {
        match self {
            Lookup::Found { credentials, .. } => Some(credentials),
            _ => None,
        }
    }

    /// The registry looked up.
    pub fn registry(&self) -> &RegistryHost {
        match self {
            Lookup::Found { registry, .. }
            | Lookup::Helper { registry, .. }
            | Lookup::Missing { registry, .. } => registry,
        }
    }
}

impl fmt::Display for Lookup {
    /// Says whether credentials were found and where, never what they are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Found { registry, credentials, key, file } => write!(
                f,
                "credentials for {registry} were found in {} (auths key {key:?}, {})",
                file.display(),
                credentials.describe()
            ),
            Lookup::Helper { registry, helper, setting, file } => write!(
                f,
                "no usable credentials for {registry}: {} names the credential helper \
                 docker-credential-{helper} ({setting}) for it, which cannot run in this image; \
                 put the credentials in `auths` instead",
                file.display()
            ),
            Lookup::Missing { registry, file: Some(file) } => {
                write!(f, "no credentials for {registry} in {}", file.display())
            }
            Lookup::Missing { registry, file: None } => {
                write!(f, "no credentials for {registry}: no Docker config file (see --docker-config)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::reference::Reference;

    const PASSWORD: &str = "pa55:w?rd>~";

    fn registry(reference: &str) -> RegistryHost {
        RegistryHost::of(&Reference::parse(reference).unwrap())
    }

    fn config(json: &str) -> DockerConfig {
        DockerConfig::parse(Path::new("/cfg/config.json"), json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn malformed(json: &str) -> String {
        DockerConfig::parse(Path::new("/cfg/config.json"), json.as_bytes()).unwrap_err().to_string()
    }

    fn basic(user: &str, password: &str) -> Credentials {
        Credentials::Basic { username: user.into(), password: Secret::new(password) }
    }

    #[test]
    fn every_credential_form() {
        let auth = STANDARD.encode(format!("alice:{PASSWORD}"));
        let c = config(&format!(
            r#"{{"auths": {{
                "a.io": {{"auth": "{auth}"}},
                "b.io": {{"username": "bob", "password": "{PASSWORD}"}},
                "c.io": {{"auth": "{}", "identitytoken": "refresh-me"}},
                "d.io": {{"identitytoken": "t0ken"}},
                "e.io": {{"registrytoken": "bearer-me", "username": "ignored"}},
                "f.io": {{"auth": "{}", "username": "overridden", "password": "x", "email": "a@b"}}
            }}, "psFormat": "table", "HttpHeaders": {{"X": "y"}}}}"#,
            STANDARD.encode("00000000-0000:"),
            STANDARD.encode("carol:p"),
        ));
        let found = |r: &str| c.lookup(&registry(r)).credentials().cloned();
        assert_eq!(found("a.io/x"), Some(basic("alice", PASSWORD)));
        assert_eq!(found("b.io/x"), Some(basic("bob", PASSWORD)));
        assert_eq!(
            found("c.io/x"),
            Some(Credentials::IdentityToken {
                username: Some("00000000-0000".into()),
                token: Secret::new("refresh-me")
            })
        );
        assert_eq!(
            found("d.io/x"),
            Some(Credentials::IdentityToken { username: None, token: Secret::new("t0ken") })
        );
        assert_eq!(found("e.io/x"), Some(Credentials::RegistryToken { token: Secret::new("bearer-me") }));
        assert_eq!(found("f.io/x"), Some(basic("carol", "p")));
        assert_eq!(found("g.io/x"), None);
        assert_eq!(c.credential_count(), 6);

        let a = found("a.io/x").unwrap();
        assert_eq!(a.basic(), Some(("alice", PASSWORD)));
        assert_eq!((a.bearer(), a.refresh_token()), (None, None));
        assert_eq!(found("e.io/x").unwrap().bearer(), Some("bearer-me"));
        assert_eq!(found("d.io/x").unwrap().refresh_token(), Some("t0ken"));
    }

    #[test]
    fn registries_match_like_the_docker_cli() {
        let c = config(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "https://ghcr.io/v2/": {{"auth": "{}"}},
                "127.0.0.1:5001": {{"auth": "{}"}},
                "http://127.0.0.1:5001": {{"auth": "{}"}}
            }}}}"#,
            STANDARD.encode("hub:1"),
            STANDARD.encode("gh:2"),
            STANDARD.encode("exact:3"),
            STANDARD.encode("scheme:4"),
        ));
        let user =
            |r: &str| c.lookup(&registry(r)).credentials().and_then(|c| c.username().map(str::to_owned));
        assert_eq!(user("nginx").as_deref(), Some("hub"));
        assert_eq!(user("docker.io/library/nginx").as_deref(), Some("hub"));
        assert_eq!(user("ghcr.io/org/app:1").as_deref(), Some("gh"));
        assert_eq!(user("127.0.0.1:5001/app").as_deref(), Some("exact"), "the exact key wins");
        assert_eq!(user("127.0.0.1:5000/app"), None);
        assert_eq!(user("quay.io/app"), None);

        let c =
            config(&format!(r#"{{"auths": {{"docker.io": {{"auth": "{}"}}}}}}"#, STANDARD.encode("hub:1")));
        assert_eq!(
            c.lookup(&registry("busybox")).credentials().map(|c| c.describe()),
            Some("a user name and password")
        );
    }

    #[test]
    fn helpers_are_explained_per_registry() {
        let c = config(&format!(
            r#"{{"auths": {{"ghcr.io": {{}}, "quay.io": {{"auth": "{}"}}}},
                "credsStore": "desktop",
                "credHelpers": {{"123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login", "quay.io": "quay"}}}}"#,
            STANDARD.encode("q:1")
        ));
        let ecr = c.lookup(&registry("123.dkr.ecr.eu-west-1.amazonaws.com/app:1"));
        assert!(
            matches!(&ecr, Lookup::Helper { helper, setting: "credHelpers", .. } if helper == "ecr-login")
        );
        assert_eq!(
            ecr.to_string(),
            "no usable credentials for 123.dkr.ecr.eu-west-1.amazonaws.com: /cfg/config.json names the \
             credential helper docker-credential-ecr-login (credHelpers) for it, which cannot run in this \
             image; put the credentials in `auths` instead"
        );
        let ghcr = c.lookup(&registry("ghcr.io/a"));
        assert!(
            matches!(&ghcr, Lookup::Helper { helper, setting: "credsStore", .. } if helper == "desktop"),
            "{ghcr:?}"
        );
        assert!(c.lookup(&registry("quay.io/a")).credentials().is_some(), "inline credentials beat a helper");
        assert_eq!(c.unusable_helpers(), [("123.dkr.ecr.eu-west-1.amazonaws.com", "ecr-login")]);
        assert_eq!(c.creds_store(), Some("desktop"));
    }

    #[test]
    fn lookup_messages_say_what_was_found_never_the_secret() {
        let auth = STANDARD.encode(format!("alice:{PASSWORD}"));
        let c = config(&format!(r#"{{"auths": {{"https://reg.io": {{"auth": "{auth}"}}}}}}"#));
        let found = c.lookup(&registry("reg.io/app"));
        let text = format!("{found} {found:?}");
        assert!(text.starts_with(
            "credentials for reg.io were found in /cfg/config.json (auths key \"https://reg.io\", a user name and password)"
        ), "{text}");
        assert!(!text.contains(PASSWORD) && !text.contains(&auth), "{text}");
        assert_eq!(
            c.lookup(&registry("other.io/a")).to_string(),
            "no credentials for other.io in /cfg/config.json"
        );
        assert_eq!(
            crate::registry::CredentialSet::default().lookup(&registry("other.io/a")).to_string(),
            "no credentials for other.io: no Docker config file (see --docker-config)"
        );
        for credentials in [
            basic("alice", PASSWORD),
            Credentials::IdentityToken { username: None, token: Secret::new(PASSWORD) },
            Credentials::RegistryToken { token: Secret::new(PASSWORD) },
        ] {
            let debug = format!("{credentials:?}");
            assert!(!debug.contains(PASSWORD) && debug.contains("<redacted>"), "{debug}");
        }
    }

    #[test]
    fn x_registry_auth_is_url_safe_base64_json() {
        let registry = registry("127.0.0.1:5001/app");
        // This password's JSON encodes to both `+`/`/` positions in standard base64.
        let header = basic("alice", "??>>~~").x_registry_auth(&registry);
        assert!(!header.contains('+') && !header.contains('/'), "{header}");
        let json: Value = serde_json::from_slice(&URL_SAFE.decode(&header).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"username": "alice", "password": "??>>~~", "serveraddress": "127.0.0.1:5001"})
        );
        let hub = RegistryHost::new("docker.io");
        let json: Value = serde_json::from_slice(
            &URL_SAFE
                .decode(
                    Credentials::IdentityToken { username: Some("u".into()), token: Secret::new("t") }
                        .x_registry_auth(&hub),
                )
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"username": "u", "identitytoken": "t", "serveraddress": "https://index.docker.io/v1/"})
        );
        let json: Value = serde_json::from_slice(
            &URL_SAFE
                .decode(Credentials::RegistryToken { token: Secret::new("b") }.x_registry_auth(&hub))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"registrytoken": "b", "serveraddress": "https://index.docker.io/v1/"})
        );
    }

    #[test]
    fn malformed_files_name_the_file_and_key_but_no_secret() {
        let secret = "c2VjcmV0LXZhbHVl-not-base64!";
        let cases = [
            (
                "{",
                "malformed Docker config file /cfg/config.json: not JSON: EOF while parsing an object at line 1 column 1",
            ),
            ("[]", "malformed Docker config file /cfg/config.json: not a JSON object"),
            (r#"{"auths": []}"#, "malformed Docker config file /cfg/config.json: `auths` is not an object"),
            (
                &format!(r#"{{"auths": {{"r.io": "{secret}"}}}}"#),
                "malformed Docker config file /cfg/config.json: auths.\"r.io\" is not an object",
            ),
            (
                &format!(r#"{{"auths": {{"r.io": {{"auth": "{secret}"}}}}}}"#),
                "malformed Docker config file /cfg/config.json: auths.\"r.io\".auth is not the base64 encoding of `user:password`",
            ),
            (
                &format!(r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#, STANDARD.encode(secret)),
                "malformed Docker config file /cfg/config.json: auths.\"r.io\".auth is not the base64 encoding of `user:password`",
            ),
            (
                r#"{"auths": {"r.io": {"password": 12345}}}"#,
                "malformed Docker config file /cfg/config.json: auths.\"r.io\".password is not a string",
            ),
            (
                &format!(r#"{{"auths": {{"r.io": {{"password": "{secret}"}}}}}}"#),
                "malformed Docker config file /cfg/config.json: auths.\"r.io\" has a password but no user name",
            ),
            (
                r#"{"auths": {"r.io": {"username": "u"}}}"#,
                "malformed Docker config file /cfg/config.json: auths.\"r.io\" has a user name but no password",
            ),
            (
                r#"{"credsStore": 1}"#,
                "malformed Docker config file /cfg/config.json: `credsStore` is not a string",
            ),
            (
                r#"{"credHelpers": {"a.io": 1}}"#,
                "malformed Docker config file /cfg/config.json: credHelpers.\"a.io\" is not a string",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(malformed(json), expected, "{json}");
        }
        // A syntax error after a secret gives a position, never the text.
        let message = malformed(&format!(r#"{{"auths": {{"r.io": {{"password": "{secret}" "#));
        assert!(!message.contains(secret), "{message}");
        assert!(malformed("\u{0}\u{ff}").contains("not JSON"));
        assert_eq!(config("").credential_count(), 0);
        assert_eq!(config(" \n").credential_count(), 0);
        assert_eq!(config(r#"{"auths": null, "credsStore": ""}"#).creds_store(), None);
    }
}
