//! The validated configuration, built from the command line before any work starts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::app::reload::ListSource;
use crate::cli::{
    CliCommand, DaemonArgs, ImagesArgs, LayersArg, LoadArgs, ModeArg, OutputFormat, PreloadArgs,
    RefreshPolicyArg, SourceArgs,
};
use crate::daemon::{self, DockerError};
use crate::image::list::{self, ImageListError, ImageSpec};
use crate::platform::Platform;
use crate::preload::pass::Settings;
use crate::preload::policy::{MaxAge, RefreshPolicy};
use crate::registry::ConfigLocation;
use crate::registry::RegistryHost;
use crate::registry::client;
use crate::registry::host::DOCKER_HUB;
use crate::source::registry::LayerStorage;
use crate::store::space::MinFree;

/// Docker's default socket.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// What to do.
#[derive(Debug, Clone)]
pub enum Config {
    /// Loop until shutdown.
    Run(RunConfig),
    /// One pass.
    Warm(PreloadConfig),
    /// Print archive (or record) paths.
    Path {
        /// The images.
        images: Vec<ImageSpec>,
        /// Print record paths instead.
        record: bool,
    },
    /// Check every archive in a directory.
    Verify {
        /// The archive directory.
        dir: PathBuf,
    },
    /// Load archives into a daemon.
    Load(LoadConfig),
    /// Show what the directory holds.
    Status {
        /// The archive directory.
        dir: PathBuf,
        /// The image list, if one was given.
        images: Option<Vec<ImageSpec>>,
        /// The refresh limit freshness is judged by (`None`: never refreshed).
        max_age: Option<Duration>,
        /// Output format.
        output: OutputFormat,
    },
}

/// `load` settings.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The archive directory.
    pub dir: PathBuf,
    /// Archive paths given directly, relative to `dir` or absolute.
    pub archives: Vec<PathBuf>,
    /// Images whose archives to load.
    pub images: Vec<ImageSpec>,
    /// Load every archive in `dir` too.
    pub all: bool,
    /// Daemon address.
    pub docker_host: String,
    /// How long to wait for the daemon.
    pub wait_timeout: Duration,
    /// Progress deadline of every daemon call.
    pub stall_timeout: Duration,
    /// Archives loaded at once.
    pub concurrency: usize,
    /// Any archive not loaded is an error.
    pub strict: bool,
    /// Bound on the whole run.
    pub deadline: Option<Duration>,
    /// Keep running after loading.
    pub idle: bool,
}

/// Settings shared by `run` and `warm`.
#[derive(Debug, Clone)]
pub struct PreloadConfig {
    /// The images, validated and unique.
    pub images: Vec<ImageSpec>,
    /// Archive directory.
    pub dir: PathBuf,
    /// Age rule.
    pub max_age: MaxAge,
    /// What happens at expiry.
    pub refresh: RefreshPolicy,
    /// Disk guard.
    pub min_free: MinFree,
    /// Remove unlisted archives after each pass.
    pub prune: bool,
    /// Remove images from the daemon after saving.
    pub remove_after_save: bool,
    /// Daemon address.
    pub docker_host: String,
    /// How long to wait for the daemon.
    pub wait_timeout: Duration,
    /// Progress deadline of every daemon call.
    pub stall_timeout: Duration,
    /// Images processed at once.
    pub concurrency: usize,
    /// Where images come from.
    pub source: SourceConfig,
    /// Where the Docker config file with registry credentials is.
    pub docker_config: ConfigLocation,
    /// `--platform`: the platform of every image without its own (already applied to `images`).
    pub platform: Option<Platform>,
}

/// Where images come from (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A Docker daemon.
    Daemon,
    /// The registries, directly.
    Registry,
    /// The daemon if it answers right away, else the registries.
    Auto,
}

/// The source settings.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `--mode`, with the command's default applied.
    pub mode: Mode,
    /// Mirror URLs per registry host (`docker.io` for Docker Hub), in the order given.
    pub mirrors: HashMap<String, Vec<String>>,
    /// Registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA certificates (checked readable and valid).
    pub ca_file: Option<PathBuf>,
    /// How registry mode stores layers.
    pub layers: LayerStorage,
}

impl PreloadConfig {
    /// The settings of one pass.
    pub fn settings(&self) -> Settings {
        Settings {
            max_age: self.max_age,
            refresh: self.refresh,
            min_free: self.min_free,
            concurrency: self.concurrency,
            remove_after_save: self.remove_after_save,
        }
    }
}

/// `run` settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Shared settings.
    pub preload: PreloadConfig,
    /// Time between passes.
    pub interval: Duration,
    /// Where to serve health, readiness and metrics, if anywhere.
    pub listen: Option<SocketAddr>,
    /// With `--images-file`: where to read the list again when the file changes.
    pub reload: Option<ListSource>,
}

/// A configuration error: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Images(#[from] ImageListError),
    #[error("{0}")]
    Registry(String),
    #[error("no images given: pass IMAGE arguments or --images-file")]
    NoImages,
    #[error("{0}")]
    DockerHost(#[from] DockerError),
    #[error("nothing to load: pass ARCHIVE paths, --image, --images-file or --all")]
    NothingToLoad,
    #[error("invalid archive path {0:?}: a relative path must stay inside --dir (no `..`)")]
    ArchivePath(PathBuf),
    #[error("--dir {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("--dir {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("--dir {path}: {message}")]
    DirectoryUnreadable { path: PathBuf, message: String },
}

/// Checks `--dir` before any work: it must be a directory if it exists (and, for `verify`, it must
/// exist: a directory that is not there holds no archive to vouch for).
fn check_dir(dir: PathBuf, must_exist: bool) -> Result<PathBuf, ConfigError> {
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok(dir),
        Ok(_) => Err(ConfigError::NotADirectory(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if must_exist {
                Err(ConfigError::NoDirectory(dir))
            } else {
                Ok(dir)
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(ConfigError::NotADirectory(dir)),
        Err(e) => Err(ConfigError::DirectoryUnreadable { path: dir, message: e.to_string() }),
    }
}

impl TryFrom<CliCommand> for Config {
    type Error = ConfigError;

    fn try_from(command: CliCommand) -> Result<Config, ConfigError> {
        Ok(match command {
            CliCommand::Run(args) => {
                let reload = args
                    .preload
                    .images
                    .images_file
                    .clone()
                    .map(|file| ListSource { arguments: args.preload.images.images.clone(), file });
                Config::Run(RunConfig {
                    preload: preload_config(args.preload, Mode::Daemon)?,
                    interval: args.interval,
                    listen: args.listen,
                    reload,
                })
            }
            CliCommand::Warm(args) => Config::Warm(preload_config(args.preload, Mode::Auto)?),
            CliCommand::Path(args) => Config::Path { images: path_list(&args.images)?, record: args.record },
            CliCommand::Verify(args) => Config::Verify { dir: check_dir(args.dir.dir, true)? },
            CliCommand::Status(args) => {
                let listed = !args.images.images.is_empty() || args.images.images_file.is_some();
                let images = if listed {
                    Some(list::load(&args.images.images, args.images.images_file.as_deref())?.images)
                } else {
                    None
                };
                Config::Status {
                    dir: args.dir.dir,
                    images,
                    max_age: MaxAge::from_days(args.max_image_age).limit(),
                    output: args.output,
                }
            }
            CliCommand::Load(args) => Config::Load(load_config(args)?),
        })
    }
}

fn image_list(args: &ImagesArgs) -> Result<Vec<ImageSpec>, ConfigError> {
    let list = list::load(&args.images, args.images_file.as_deref())?;
    for (origin, reference) in &list.duplicates {
        tracing::warn!("{origin}: {reference} names an image already listed; ignored");
    }
    for (origin, reference, first) in &list.same_image {
        tracing::warn!(
            "{origin}: {reference} names the same image as {first} under another archive name; both \
             archives are written (the second pull finds the image up to date)"
        );
    }
    if list.images.is_empty() {
        return Err(ConfigError::NoImages);
    }
    Ok(list.images)
}

/// For `path`: every reference is answered, in order, even if several share an archive.
fn path_list(args: &ImagesArgs) -> Result<Vec<ImageSpec>, ConfigError> {
    let parsed = list::parse_all(list::entries(&args.images, args.images_file.as_deref())?)?;
    if parsed.is_empty() {
        return Err(ConfigError::NoImages);
    }
    Ok(parsed.into_iter().map(|(_, _, spec)| spec).collect())
}

/// `--docker-host`, else `$DOCKER_HOST`, else the default socket; checked, not contacted.
fn docker_host(args: &DaemonArgs) -> Result<String, ConfigError> {
    let host = args
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned());
    daemon::validate_host(&host)?;
    Ok(host)
}

fn load_config(args: LoadArgs) -> Result<LoadConfig, ConfigError> {
    use std::path::Component;
    for archive in &args.archives {
        let inside = archive.is_absolute()
            || archive.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside || archive.as_os_str().is_empty() {
            return Err(ConfigError::ArchivePath(archive.clone()));
        }
    }
    let parsed = list::parse_all(list::entries(&args.images, args.images_file.as_deref())?)?;
    let mut images: Vec<ImageSpec> = Vec::new();
    for (_, _, spec) in parsed {
        if !images.iter().any(|known| known.archive == spec.archive) {
            images.push(spec);
        }
    }
    if args.archives.is_empty() && images.is_empty() && !args.all {
        return Err(ConfigError::NothingToLoad);
    }
    Ok(LoadConfig {
        dir: check_dir(args.dir.dir, false)?,
        archives: args.archives,
        images,
        all: args.all,
        docker_host: docker_host(&args.daemon)?,
        wait_timeout: args.daemon.wait_timeout,
        stall_timeout: args.daemon.stall_timeout,
        concurrency: usize::from(args.concurrency),
        strict: args.strict,
        deadline: args.deadline,
        idle: args.idle,
    })
}

/// `[HOST=]URL` → (registry host, URL); no HOST means Docker Hub.
fn parse_mirror(text: &str) -> Result<(String, String), ConfigError> {
    let bad = |why: &str| ConfigError::Registry(format!("invalid --registry-mirror {text:?}: {why}"));
    let (host, url) = match text.split_once('=') {
        Some((host, url)) => (RegistryHost::new(host.trim()).as_str().to_owned(), url.trim()),
        None => (DOCKER_HUB.to_owned(), text.trim()),
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad("HOST must be a registry host such as ghcr.io or registry.local:5000"));
    }
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {
            Ok((host, url.trim_end_matches('/').to_owned()))
        }
        _ => Err(bad("the mirror must be an http:// or https:// URL")),
    }
}

fn source_config(args: SourceArgs, default_mode: Mode) -> Result<SourceConfig, ConfigError> {
    let mut mirrors: HashMap<String, Vec<String>> = HashMap::new();
    for text in args.registry_mirrors.iter().filter(|t| !t.trim().is_empty()) {
        let (host, url) = parse_mirror(text)?;
        mirrors.entry(host).or_default().push(url);
    }
    if let Some(path) = &args.ca_file {
        client::load_ca(path).map_err(|e| ConfigError::Registry(e.to_string()))?;
    }
    Ok(SourceConfig {
        mode: match args.mode {
            None => default_mode,
            Some(ModeArg::Daemon) => Mode::Daemon,
            Some(ModeArg::Registry) => Mode::Registry,
            Some(ModeArg::Auto) => Mode::Auto,
        },
        mirrors,
        insecure: args
            .insecure_registries
            .iter()
            .filter(|h| !h.trim().is_empty())
            .map(|h| RegistryHost::new(h.trim()).as_str().to_owned())
            .collect(),
        ca_file: args.ca_file,
        layers: match args.layers {
            LayersArg::Compressed => LayerStorage::Compressed,
            LayersArg::Uncompressed => LayerStorage::Uncompressed,
        },
    })
}

fn preload_config(args: PreloadArgs, default_mode: Mode) -> Result<PreloadConfig, ConfigError> {
    let docker_host = docker_host(&args.daemon)?;
    let source = source_config(args.source, default_mode)?;
    let mut images = image_list(&args.images)?;
    if let Some(platform) = &args.platform {
        // Names stay as they are: only an entry's own platform shows in its archive name.
        for image in images.iter_mut().filter(|i| i.platform.is_none()) {
            image.platform = Some(platform.clone());
        }
    }
    Ok(PreloadConfig {
        images,
        dir: check_dir(args.dir.dir, false)?,
        max_age: MaxAge::from_days(args.max_image_age),
        refresh: match args.refresh_policy {
            RefreshPolicyArg::Digest => RefreshPolicy::Digest,
            RefreshPolicyArg::Rebuild => RefreshPolicy::Rebuild,
        },
        min_free: args.min_free,
        prune: args.prune,
        remove_after_save: args.remove_after_save,
        docker_host,
        wait_timeout: args.daemon.wait_timeout,
        stall_timeout: args.daemon.stall_timeout,
        concurrency: usize::from(args.concurrency),
        source,
        docker_config: ConfigLocation::from_env(args.docker_config),
        platform: args.platform,
    })
}
