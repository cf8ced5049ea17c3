//! Where the Docker config file is, and the credentials in force: re-read before each pass so a
//! rotated Secret is used without a restart, keeping the last good read when the file is broken.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::credentials::{CredentialsError, DockerConfig, Lookup};
use super::host::RegistryHost;

/// Where the Docker config file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigLocation {
    /// Given with `--docker-config`: it must exist.
    Given(PathBuf),
    /// The default location: used when it exists.
    Default(PathBuf),
    /// No file: anonymous pulls only.
    Nowhere,
}

impl ConfigLocation {
    /// `given`, else `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`, else none.
    pub fn resolve(given: Option<PathBuf>, docker_config: Option<OsString>, home: Option<OsString>) -> Self {
        if let Some(path) = given {
            return ConfigLocation::Given(path);
        }
        if let Some(dir) = docker_config.filter(|d| !d.is_empty()) {
            return ConfigLocation::Default(PathBuf::from(dir).join("config.json"));
        }
        match home.filter(|h| !h.is_empty()) {
            Some(home) => ConfigLocation::Default(PathBuf::from(home).join(".docker").join("config.json")),
            None => ConfigLocation::Nowhere,
        }
    }

    /// [`ConfigLocation::resolve`] with this process's environment.
    pub fn from_env(given: Option<PathBuf>) -> Self {
        ConfigLocation::resolve(given, std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME"))
    }

    /// The path, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigLocation::Given(path) | ConfigLocation::Default(path) => Some(path),
            ConfigLocation::Nowhere => None,
        }
    }

    /// Reads the file (blocking): `None` when there is none to read (a default location that does
    /// not exist).
    pub fn read(&self) -> Result<Option<DockerConfig>, CredentialsError> {
        match self {
            ConfigLocation::Nowhere => Ok(None),
            ConfigLocation::Given(path) => DockerConfig::read(path).map(Some),
            ConfigLocation::Default(path) => match DockerConfig::read(path) {
                Err(CredentialsError::Missing { .. }) => Ok(None),
                other => other.map(Some),
            },
        }
    }
}

/// The credentials in force: the last good read of the config file. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialSet {
    config: Option<Arc<DockerConfig>>,
}

impl CredentialSet {
    /// What the set holds for `registry`.
    pub fn lookup(&self, registry: &RegistryHost) -> Lookup {
        match &self.config {
            Some(config) => config.lookup(registry),
            None => Lookup::Missing { registry: registry.clone(), file: None },
        }
    }

    /// The config behind the set, if any.
    pub fn config(&self) -> Option<&DockerConfig> {
        self.config.as_deref()
    }
}

/// What a reload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The same content as before (or still no file).
    Unchanged,
    /// New content is in force (the first read counts as a change when a file exists).
    Changed,
    /// The file went away (a default location only): no credentials from now on.
    Removed,
}

/// The config file's location and the last good read of it. `run` reloads it before each pass,
/// so a rotated Secret is used without a restart; a failed read keeps the previous credentials.
#[derive(Debug, Clone)]
pub struct Keyring {
    location: ConfigLocation,
    current: CredentialSet,
}

impl Keyring {
    /// A keyring for `location`, not read yet (no credentials until [`Keyring::reload`]).
    pub fn new(location: ConfigLocation) -> Keyring {
        Keyring { location, current: CredentialSet::default() }
    }

    /// Where the file is.
    pub fn location(&self) -> &ConfigLocation {
        &self.location
    }

    /// Reads the file again (blocking). On error the previous credentials stay in force.
    pub fn reload(&mut self) -> Result<Reloaded, CredentialsError> {
        let next = self.location.read()?;
        let changed = self.current.config.as_deref() != next.as_ref();
        let outcome = match (&next, changed) {
            (_, false) => Reloaded::Unchanged,
            (None, true) => Reloaded::Removed,
            (Some(_), true) => Reloaded::Changed,
        };
        if changed {
            self.current = CredentialSet { config: next.map(Arc::new) };
        }
        Ok(outcome)
    }

    /// The credentials in force.
    pub fn current(&self) -> CredentialSet {
        self.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::image::reference::Reference;

    fn registry(reference: &str) -> RegistryHost {
        RegistryHost::of(&Reference::parse(reference).unwrap())
    }

    #[test]
    fn where_the_file_is() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            ConfigLocation::resolve(Some("/x.json".into()), os("/dc"), os("/home/u")),
            ConfigLocation::Given("/x.json".into())
        );
        assert_eq!(
            ConfigLocation::resolve(None, os("/dc"), os("/home/u")),
            ConfigLocation::Default("/dc/config.json".into())
        );
        assert_eq!(
            ConfigLocation::resolve(None, os(""), os("/home/u")),
            ConfigLocation::Default("/home/u/.docker/config.json".into())
        );
        assert_eq!(ConfigLocation::resolve(None, None, None), ConfigLocation::Nowhere);
        assert_eq!(ConfigLocation::resolve(None, None, os("")), ConfigLocation::Nowhere);
    }

    #[test]
    fn reloading_keeps_the_last_good_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let write = |user: &str| {
            std::fs::write(
                &path,
                format!(r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#, STANDARD.encode(format!("{user}:p"))),
            )
            .unwrap()
        };
        let user = |k: &Keyring| {
            k.current()
                .lookup(&registry("r.io/a"))
                .credentials()
                .and_then(|c| c.username().map(str::to_owned))
        };

        let mut given = Keyring::new(ConfigLocation::Given(path.clone()));
        let err = given.reload().unwrap_err();
        assert_eq!(err.to_string(), format!("the Docker config file {} does not exist", path.display()));
        let mut default = Keyring::new(ConfigLocation::Default(path.clone()));
        assert_eq!(default.reload(), Ok(Reloaded::Unchanged));

        write("one");
        assert_eq!(given.reload(), Ok(Reloaded::Changed));
        assert_eq!(given.reload(), Ok(Reloaded::Unchanged));
        assert_eq!(user(&given).as_deref(), Some("one"));

        std::fs::write(&path, "{ not json").unwrap();
        let err = given.reload().unwrap_err();
        assert!(matches!(err, CredentialsError::Malformed { .. }), "{err}");
        assert_eq!(user(&given).as_deref(), Some("one"), "the previous credentials stay in force");

        write("two");
        assert_eq!(given.reload(), Ok(Reloaded::Changed));
        assert_eq!(user(&given).as_deref(), Some("two"));

        assert_eq!(default.reload(), Ok(Reloaded::Changed));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(default.reload(), Ok(Reloaded::Removed));
        assert_eq!(user(&default), None);
        assert!(given.reload().is_err());
        assert_eq!(user(&given).as_deref(), Some("two"));
    }
}
