//! Prometheus metrics of the `run` loop (the `prometheus-client` crate): per image, per pass and
//! per process, updated by the status feed and encoded for `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::preload::outcome::Failure;

/// The label of per-image series: the reference as listed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabel {
    /// The image reference.
    pub image: String,
}

/// The labels of a failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The image reference.
    pub image: String,
    /// The step that failed (`pull`, `export`, `write`, ...).
    pub step: String,
    /// The kind of failure (`auth`, `not_found`, `transient`, `no_space`, ...).
    pub kind: String,
}

/// The label of per-outcome counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `built`, `kept`, `unchanged`, `unverified`, `failed`.
    pub outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    archive_bytes: Family<ImageLabel, Gauge>,
    last_success: Family<ImageLabel, FloatGauge>,
    last_check: Family<ImageLabel, FloatGauge>,
    failures: Family<FailureLabels, Counter>,
    build_duration: Histogram,
    passes: Counter,
    pass_duration: Histogram,
    outcomes: Family<OutcomeLabel, Counter>,
    written: Counter,
    daemon_wait: FloatGauge,
    listed: Gauge,
    ready: Gauge,
    list_reload_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn seconds_since_epoch(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    /// The metrics, all at zero, under the `image_preloader_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("image_preloader");
        let metrics = Metrics {
            registry: Registry::default(),
            archive_bytes: Family::default(),
            last_success: Family::default(),
            last_check: Family::default(),
            failures: Family::default(),
            // 1 s to about 4.5 h.
            build_duration: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            passes: Counter::default(),
            pass_duration: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            outcomes: Family::default(),
            written: Counter::default(),
            daemon_wait: FloatGauge::default(),
            listed: Gauge::default(),
            ready: Gauge::default(),
            list_reload_failures: Counter::default(),
        };
        registry.register(
            "build",
            "The version of this image-preloader",
            Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        );
        registry.register_with_unit(
            "archive",
            "Size of the image's archive as last built or confirmed by this process",
            Unit::Bytes,
            metrics.archive_bytes.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the image's archive was last built or confirmed (Unix time)",
            metrics.last_success.clone(),
        );
        registry.register(
            "last_check_timestamp_seconds",
            "When the image was last processed, whatever the outcome (Unix time)",
            metrics.last_check.clone(),
        );
        registry.register(
            "image_failures",
            "Failed attempts per image, by step and kind",
            metrics.failures.clone(),
        );
        registry.register_with_unit(
            "build_duration",
            "Time to build one archive (pull, export, check, publish)",
            Unit::Seconds,
            metrics.build_duration.clone(),
        );
        registry.register("passes", "Passes finished", metrics.passes.clone());
        registry.register_with_unit(
            "pass_duration",
            "Time one pass took",
            Unit::Seconds,
            metrics.pass_duration.clone(),
        );
        registry.register(
            "image_outcomes",
            "Images processed, by outcome (built, kept, unchanged, unverified, failed)",
            metrics.outcomes.clone(),
        );
        registry.register_with_unit("written", "Archive bytes written", Unit::Bytes, metrics.written.clone());
        registry.register_with_unit(
            "daemon_wait",
            "Time spent waiting for the Docker daemon at start",
            Unit::Seconds,
            metrics.daemon_wait.clone(),
        );
        registry.register("images_listed", "Images in the list", metrics.listed.clone());
        registry.register("images_ready", "Listed images with a valid archive", metrics.ready.clone());
        registry.register(
            "list_reload_failures",
            "Changed image lists refused because they did not validate (the previous list stays)",
            metrics.list_reload_failures.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sets the listed and ready counts.
    pub fn set_counts(&self, listed: usize, ready: usize) {
        self.listed.set(listed as i64);
        self.ready.set(ready as i64);
    }

    /// Drops the per-image series of an image no longer listed.
    pub fn forget(&self, image: &str) {
        let label = ImageLabel { image: image.to_owned() };
        self.archive_bytes.remove(&label);
        self.last_success.remove(&label);
        self.last_check.remove(&label);
    }

    /// An image was processed at `at`.
    pub fn checked(&self, image: &str, at: SystemTime) {
        self.last_check.get_or_create(&ImageLabel { image: image.to_owned() }).set(seconds_since_epoch(at));
    }

    /// An image's archive was built (`built` is `Some((bytes, duration))`) or confirmed at `at`.
    pub fn succeeded(&self, image: &str, at: SystemTime, built: Option<(u64, Duration)>) {
        let label = ImageLabel { image: image.to_owned() };
        self.last_success.get_or_create(&label).set(seconds_since_epoch(at));
        if let Some((bytes, duration)) = built {
            self.archive_bytes.get_or_create(&label).set(bytes as i64);
            self.build_duration.observe(duration.as_secs_f64());
            self.written.inc_by(bytes);
        }
    }

    /// An image failed.
    pub fn failed(&self, image: &str, failure: &Failure) {
        self.failures
            .get_or_create(&FailureLabels {
                image: image.to_owned(),
                step: failure.step.as_str().to_owned(),
                kind: failure.kind.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts one image's outcome.
    pub fn outcome(&self, label: &str) {
        self.outcomes.get_or_create(&OutcomeLabel { outcome: label.to_owned() }).inc();
    }

    /// A pass finished.
    pub fn pass(&self, elapsed: Duration) {
        self.passes.inc();
        self.pass_duration.observe(elapsed.as_secs_f64());
    }

    /// The daemon answered after `waited`.
    pub fn daemon_waited(&self, waited: Duration) {
        self.daemon_wait.set(waited.as_secs_f64());
    }

    /// A changed image list was refused.
    pub fn list_refused(&self) {
        self.list_reload_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preload::outcome::{FailureKind, Step};

    #[test]
    fn encodes_series_with_labels_and_forgets_unlisted_images() {
        let metrics = Metrics::new();
        let now = SystemTime::now();
        metrics.checked("a:1", now);
        metrics.succeeded("a:1", now, Some((42, Duration::from_secs(3))));
        metrics.failed("b:1", &Failure::new(Step::Pull, FailureKind::NotFound, "no such image"));
        metrics.set_counts(2, 1);
        let text = metrics.encode();
        assert!(text.contains(r#"image_preloader_archive_bytes{image="a:1"} 42"#), "{text}");
        assert!(
            text.contains(
                r#"image_preloader_image_failures_total{image="b:1",step="pull",kind="not_found"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("image_preloader_written_bytes_total 42"), "{text}");
        assert!(text.contains(r#"image_preloader_build_info{version=""#), "{text}");
        assert!(text.contains("image_preloader_images_ready 1"), "{text}");
        metrics.forget("a:1");
        assert!(!metrics.encode().contains(r#"image_preloader_archive_bytes{image="a:1"}"#));
    }
}
