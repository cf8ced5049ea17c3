//! Registries, independent of how images are fetched: which registry a reference names, and the
//! credentials a Docker config file holds for it. Daemon mode passes these credentials to the
//! daemon; a mode that talks to registries itself uses the same types.

pub mod credentials;
pub mod host;
pub mod keyring;

pub use credentials::{Credentials, CredentialsError, DockerConfig, Lookup, Secret};
pub use host::RegistryHost;
pub use keyring::{ConfigLocation, CredentialSet, Keyring, Reloaded};
