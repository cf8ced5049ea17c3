//! Registries, independent of how images are fetched: which registry a reference names, and the
//! credentials a Docker config file holds for it. Daemon mode passes these credentials to the
//! daemon; registry mode talks to registries itself with [`client`] (auth, manifests resolved by
//! [`manifest`], blobs checked while streaming, [`retry`] with backoff); `crate::source::registry` turns
//! an image into an archive stream.

pub mod client;
pub mod credentials;
pub mod host;
pub mod keyring;
pub mod manifest;
pub mod retry;

pub use credentials::{Credentials, CredentialsError, DockerConfig, Lookup, Secret};
pub use host::RegistryHost;
pub use keyring::{ConfigLocation, CredentialSet, Keyring, Reloaded};
