//! The command line, as clap parses it. [`crate::config`] turns it into a validated configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::platform::Platform;
use crate::store::space::MinFree;

/// Default archive directory (the seed chart's `hostPath`).
pub const DEFAULT_DIR: &str = "/opt/runner/images";

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `run`: stopped by SIGTERM or SIGINT)
  1  at least one image failed (`warm`); damaged, unrecorded or missing archives (`verify`);
     with --strict, an archive missing, damaged, not loadable or cut by --deadline (`load`)
  2  usage or configuration error (invalid reference or one too long for a file name, two
     references mapping to one archive, an images file that is unreadable or not a regular file,
     a --dir that is not a directory, a --listen address that cannot be bound),
     detected before any pull or write
  3  the Docker daemon did not answer within --wait-timeout
  130 interrupted (`warm` or `load` stopped by a signal)";

/// Keeps a directory of `docker save` archives of a list of images fresh, for CI runners that
/// `docker load` them instead of pulling.
#[derive(Debug, Parser)]
#[command(name = "image-preloader", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,

    /// Log format: human-readable text or one JSON object per line (logs go to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "IMAGE_PRELOADER_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(
        long,
        value_name = "FILTER",
        default_value = "info",
        env = "IMAGE_PRELOADER_LOG_LEVEL",
        global = true
    )]
    pub log_level: String,

    /// No progress: neither the bars `warm` and `load` draw on a terminal nor the progress lines
    /// they log elsewhere during long saves and loads. Logs and the summary are unaffected.
    #[arg(long, short = 'q', env = "IMAGE_PRELOADER_QUIET", global = true)]
    pub quiet: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Sidecar mode: wait for the daemon, preload every image, sleep --interval, repeat until
    /// SIGTERM or SIGINT. Failed images are retried sooner, with backoff.
    Run(RunArgs),
    /// Preload every image once and exit: warm a local archive directory.
    Warm(WarmArgs),
    /// Print the archive path, relative to --dir, of each image, one per line. Needs no daemon.
    Path(PathArgs),
    /// Read every archive back: recompute checksums, check completeness and compare with the
    /// records. Damaged archives are marked so the next pass rebuilds them.
    Verify(VerifyArgs),
    /// Show every archive in --dir (reference, size, age, digest, freshness, problems) from its
    /// files alone: no daemon, nothing read through or written. With a list, also the listed
    /// images not yet built.
    Status(StatusArgs),
    /// The runner side: load archives into a daemon. Each archive is checked as it streams
    /// (complete, matching its record) and the daemon only keeps it if the check passes; images the
    /// daemon already has are skipped. Problem archives are reported and skipped (exit 0 unless
    /// --strict). Writes nothing to --dir.
    Load(LoadArgs),
}

/// How archives that reached --max-image-age are refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RefreshPolicyArg {
    /// Ask the registry for the image's current digest; rebuild only if it changed, otherwise
    /// just refresh the archive's time.
    Digest,
    /// Pull and save again, whatever the registry serves (the seed chart's behaviour).
    Rebuild,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The image list.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Image references, e.g. `nginx:1.27` or `registry.local:5000/team/app:2.0`; `'REF
    /// platform=linux/arm64'` archives that platform, in an archive named `…+linux-arm64.tar`.
    #[arg(value_name = "IMAGE")]
    pub images: Vec<String>,

    /// File with one image per line, `REF [platform=OS/ARCH[/VARIANT]]` ('#' comments, blank
    /// lines and surrounding spaces are ignored); combined with the IMAGE arguments.
    #[arg(long, value_name = "FILE", env = "IMAGE_PRELOADER_IMAGES_FILE")]
    pub images_file: Option<PathBuf>,
}

/// The archive directory.
#[derive(Debug, Args)]
pub struct DirArg {
    /// Archive directory: archives are written to <DIR>/<user>/<image>_<tag>.tar, each with its
    /// record <image>_<tag>.tar.json.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR, env = "IMAGE_PRELOADER_DIR")]
    pub dir: PathBuf,
}

/// How to reach the Docker daemon.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Docker daemon address (unix:///path, tcp://host:port) [default: $DOCKER_HOST, else
    /// unix:///var/run/docker.sock].
    #[arg(long, value_name = "URL", env = "IMAGE_PRELOADER_DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// How long to wait for the daemon to answer before giving up (exit 3): seconds, or a
    /// duration such as `2m`.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration, env = "IMAGE_PRELOADER_WAIT_TIMEOUT")]
    pub wait_timeout: Duration,

    /// Progress deadline for every daemon call: a pull, export or load that moves no bytes for
    /// this long, or any other call unanswered for this long, fails that image (the pass goes on).
    /// Seconds or a duration such as `10m`.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_positive_duration, env = "IMAGE_PRELOADER_STALL_TIMEOUT")]
    pub stall_timeout: Duration,
}

/// Where images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A Docker daemon pulls each image and exports it.
    Daemon,
    /// The registries are read directly: no daemon, nothing privileged.
    Registry,
    /// The daemon if one answers right away, else the registries.
    Auto,
}

/// How registry mode stores layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayersArg {
    /// As the registry serves them (gzip): smaller archives; `docker load` decompresses them.
    Compressed,
    /// Gunzipped while streaming, as `docker save` writes them: `docker load` only unpacks.
    Uncompressed,
}

/// The image source and registry mode's settings.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Where images come from: `daemon` (a Docker daemon pulls and exports), `registry` (read the
    /// registries directly, no daemon) or `auto` (the daemon if one answers right away, else the
    /// registries) [default: `auto` for warm, `daemon` for run].
    #[arg(long, value_enum, value_name = "MODE", env = "IMAGE_PRELOADER_MODE")]
    pub mode: Option<ModeArg>,

    /// Registry mode: a mirror tried before the registry, with fallback to it, as dockerd does:
    /// `URL` for Docker Hub, `HOST=URL` for the registry HOST (repeatable; comma-separated in the
    /// environment).
    #[arg(
        long = "registry-mirror",
        value_name = "[HOST=]URL",
        value_delimiter = ',',
        env = "IMAGE_PRELOADER_REGISTRY_MIRRORS"
    )]
    pub registry_mirrors: Vec<String>,

    /// Registry mode: a registry (`host[:port]`) spoken to over plain HTTP (repeatable;
    /// comma-separated in the environment). Loopback registries (127.0.0.0/8, localhost) always are.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        value_delimiter = ',',
        env = "IMAGE_PRELOADER_INSECURE_REGISTRIES"
    )]
    pub insecure_registries: Vec<String>,

    /// Registry mode: a PEM file of CA certificates to trust besides the public roots built into
    /// the binary (for registries with a private CA).
    #[arg(long, value_name = "FILE", env = "IMAGE_PRELOADER_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Registry mode: how layers are stored in the archive: `uncompressed` (gunzipped while
    /// streaming, both digests checked; `docker load` then only unpacks, as with a daemon's
    /// export) or `compressed` (as the registry serves them: smaller archives, slower loads).
    #[arg(
        long,
        value_enum,
        value_name = "HOW",
        default_value = "uncompressed",
        env = "IMAGE_PRELOADER_LAYERS"
    )]
    pub layers: LayersArg,
}

/// Options of the commands that write archives.
#[derive(Debug, Args)]
pub struct PreloadArgs {
    #[command(flatten)]
    pub images: ImagesArgs,

    #[command(flatten)]
    pub dir: DirArg,

    /// Rebuild an archive once it is this many days old; 0 rebuilds every pass, a negative value
    /// never rebuilds an existing archive.
    #[arg(
        long,
        value_name = "DAYS",
        default_value_t = 7,
        allow_negative_numbers = true,
        env = "IMAGE_PRELOADER_MAX_IMAGE_AGE"
    )]
    pub max_image_age: i64,

    /// How an archive that reached --max-image-age is refreshed.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = RefreshPolicyArg::Digest, env = "IMAGE_PRELOADER_REFRESH_POLICY")]
    pub refresh_policy: RefreshPolicyArg,

    /// Free space to keep on the archive file system: a percentage of its size (`10%`) or a size
    /// (`5Gi`, `500MiB`, `2G`); a build that would go below it is skipped. `0` disables the guard.
    #[arg(long, value_name = "SIZE", default_value = "10%", value_parser = MinFree::parse, env = "IMAGE_PRELOADER_MIN_FREE")]
    pub min_free: MinFree,

    /// After each pass, remove the archives (and records) this tool made for images no longer in
    /// the list. Files without a record are never touched.
    #[arg(long, env = "IMAGE_PRELOADER_PRUNE")]
    pub prune: bool,

    /// Remove each image from the daemon once its archive is saved: less daemon storage, but the
    /// next rebuild pulls every layer again.
    #[arg(long, env = "IMAGE_PRELOADER_REMOVE_AFTER_SAVE")]
    pub remove_after_save: bool,

    #[command(flatten)]
    pub daemon: DaemonArgs,

    #[command(flatten)]
    pub source: SourceArgs,

    /// Images processed at once (a pull of one overlaps the save of another).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64), env = "IMAGE_PRELOADER_CONCURRENCY")]
    pub concurrency: u16,

    /// Docker config file with registry credentials (`auths`), read again at every pass and
    /// passed to the daemon per pull [default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json, when it exists].
    #[arg(long, value_name = "PATH", env = "IMAGE_PRELOADER_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,

    /// Platform of every image without its own `platform=` (`linux/arm64`, `linux/arm/v7`);
    /// archive names do not change [default: the daemon's platform].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = Platform::parse, env = "IMAGE_PRELOADER_PLATFORM")]
    pub platform: Option<Platform>,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub preload: PreloadArgs,

    /// Time between checks of the image list: seconds, or a duration such as `1h` or `30m`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_positive_duration, env = "IMAGE_PRELOADER_INTERVAL")]
    pub interval: Duration,

    /// Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this address, e.g.
    /// `0.0.0.0:9090` [default: no server].
    #[arg(long, value_name = "ADDR", env = "IMAGE_PRELOADER_LISTEN")]
    pub listen: Option<SocketAddr>,
}

/// `warm` options.
#[derive(Debug, Args)]
pub struct WarmArgs {
    #[command(flatten)]
    pub preload: PreloadArgs,
}

/// `path` options.
#[derive(Debug, Args)]
pub struct PathArgs {
    #[command(flatten)]
    pub images: ImagesArgs,

    /// Print the path of each archive's record (`<archive>.json`) instead of the archive's.
    #[arg(long, env = "IMAGE_PRELOADER_RECORD")]
    pub record: bool,
}

/// `load` options.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Archives to load: paths relative to --dir (as `path` prints them) or absolute.
    #[arg(value_name = "ARCHIVE")]
    pub archives: Vec<PathBuf>,

    /// Load the archive of this image reference (repeatable, or comma-separated in the
    /// environment): the name `run` and `warm` give it.
    #[arg(long = "image", value_name = "REF", value_delimiter = ',', env = "IMAGE_PRELOADER_LOAD_IMAGES")]
    pub images: Vec<String>,

    /// Load the archives of the images listed in this file (the same list the DaemonSet uses).
    #[arg(long, value_name = "FILE", env = "IMAGE_PRELOADER_IMAGES_FILE")]
    pub images_file: Option<PathBuf>,

    /// Load every archive under --dir.
    #[arg(long, env = "IMAGE_PRELOADER_ALL")]
    pub all: bool,

    #[command(flatten)]
    pub dir: DirArg,

    #[command(flatten)]
    pub daemon: DaemonArgs,

    /// Archives loaded at once: their uploads and the daemon's unpacking overlap (memory grows by
    /// about 7 MiB per archive in flight).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), env = "IMAGE_PRELOADER_CONCURRENCY")]
    pub concurrency: u16,

    /// Exit 1 if any archive is missing, damaged, could not be loaded or was cut by --deadline.
    /// Without it those are reported and skipped, and the exit code is 0: the job pulls what it
    /// lacks instead of the runner pod failing to start.
    #[arg(long, env = "IMAGE_PRELOADER_STRICT")]
    pub strict: bool,

    /// Bound the whole run, waiting for the daemon included: archives not loaded by then are
    /// skipped with a warning. Seconds, or a duration such as `90s` or `2m` [default: none].
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, env = "IMAGE_PRELOADER_DEADLINE")]
    pub deadline: Option<Duration>,

    /// After loading, keep running until SIGTERM, then exit 0: for use as a native sidecar
    /// (restartPolicy: Always) rather than an init container.
    #[arg(long, env = "IMAGE_PRELOADER_IDLE")]
    pub idle: bool,
}

/// `verify` options.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub dir: DirArg,
}

/// `status` output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// A JSON array, one object per archive.
    Json,
}

/// `status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub images: ImagesArgs,

    #[command(flatten)]
    pub dir: DirArg,

    /// The refresh age to judge freshness by, in days (as for `run`); 0 means every archive is
    /// due, a negative value that none ever is.
    #[arg(
        long,
        value_name = "DAYS",
        default_value_t = 7,
        allow_negative_numbers = true,
        env = "IMAGE_PRELOADER_MAX_IMAGE_AGE"
    )]
    pub max_image_age: i64,

    /// Output format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Table, env = "IMAGE_PRELOADER_OUTPUT")]
    pub output: OutputFormat,
}

/// Seconds (`90`) or a duration (`90s`, `2m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(Duration::from_secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected seconds or a duration such as 90s, 2m, 1h)"))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(parse_positive_duration("0").is_err());
    }

    #[test]
    fn every_option_has_an_env_var_and_help() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.is_positional() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                let env = arg.get_env().unwrap_or_else(|| panic!("--{} has no env var", arg.get_id()));
                assert!(env.to_string_lossy().starts_with("IMAGE_PRELOADER_"), "{env:?}");
                assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
            }
        }
    }

    #[test]
    fn negative_max_age_parses() {
        let cli = Cli::try_parse_from(["image-preloader", "warm", "--max-image-age", "-1", "a"]).unwrap();
        let CliCommand::Warm(args) = cli.command else { panic!() };
        assert_eq!(args.preload.max_image_age, -1);
    }
}
