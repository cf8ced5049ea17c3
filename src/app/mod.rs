//! The commands, wired together: what `main` calls once the configuration is valid, and how
//! their errors map to exit codes.

mod load;
mod preload;
pub mod reload;
mod serve;
mod status;
mod verify;

use std::io::Write;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::DockerError;
use crate::image::list::ImageSpec;
use crate::registry::CredentialsError;
use crate::registry::client::RegistryError;
use crate::store::StoreError;
use crate::store::names::record_path;

/// Process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Everything succeeded.
    Success = 0,
    /// At least one image failed.
    ImagesFailed = 1,
    /// Usage or configuration error.
    Usage = 2,
    /// The daemon did not answer in time.
    DaemonUnavailable = 3,
    /// Stopped by a signal where that is not a normal end.
    Interrupted = 130,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error("{failed} of {total} images failed")]
    ImagesFailed { failed: usize, total: usize },
    #[error("interrupted; the work under way was abandoned")]
    Interrupted,
    #[error("{problems} of {total} archives in {dir} need attention")]
    VerifyFailed { problems: usize, total: usize, dir: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{problems} of {total} archives could not be loaded")]
    LoadFailed { problems: usize, total: usize },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

impl AppError {
    /// The exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            AppError::Docker(DockerError::UnsupportedHost { .. })
            | AppError::Registry(_)
            | AppError::Serve(_)
            | AppError::Credentials(_) => Exit::Usage,
            AppError::Docker(DockerError::Unavailable { .. }) => Exit::DaemonUnavailable,
            AppError::Docker(DockerError::Interrupted { .. }) | AppError::Interrupted => Exit::Interrupted,
            AppError::ImagesFailed { .. }
            | AppError::VerifyFailed { .. }
            | AppError::LoadFailed { .. }
            | AppError::Store(_) => Exit::ImagesFailed,
        }
    }
}

/// Runs a validated configuration until done or `shutdown` fires.
pub async fn execute(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    match config {
        Config::Path { images, record } => {
            print_paths(&images, record);
            Ok(())
        }
        Config::Verify { dir } => verify::verify(dir).await,
        Config::Status { dir, images, max_age, output } => status::status(dir, images, max_age, output).await,
        Config::Load(config) => load::load(config, shutdown).await,
        Config::Warm(config) => preload::warm(config, shutdown).await,
        Config::Run(config) => preload::run(config, shutdown).await,
    }
}

fn print_paths(images: &[ImageSpec], record: bool) {
    let mut out = std::io::stdout().lock();
    for image in images {
        let path = if record { record_path(&image.archive) } else { image.archive.clone() };
        // A closed pipe (`| head`) is not an error worth reporting.
        if writeln!(out, "{}", path.display()).is_err() {
            return;
        }
    }
}
