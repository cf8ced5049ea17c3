//! What to do with an archive, decided from its modification time and `--max-image-age`.
//! Pure: the caller reads the clock and the file system.

use std::fmt;
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The `--max-image-age` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxAge {
    /// `0`: rebuild every pass.
    Always,
    /// A positive number of days: rebuild once an archive is at least this old.
    Days(u32),
    /// Negative: never rebuild an archive that exists.
    Never,
}

impl MaxAge {
    /// Interprets the integer given on the command line.
    pub fn from_days(days: i64) -> MaxAge {
        match days {
            0 => MaxAge::Always,
            d if d < 0 => MaxAge::Never,
            d => MaxAge::Days(u32::try_from(d).unwrap_or(u32::MAX)),
        }
    }

    /// The age at which an archive is rebuilt, if any.
    pub fn limit(self) -> Option<Duration> {
        match self {
            MaxAge::Always => Some(Duration::ZERO),
            MaxAge::Days(days) => Some(DAY * days),
            MaxAge::Never => None,
        }
    }
}

impl fmt::Display for MaxAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxAge::Always => f.write_str("0 (rebuild every pass)"),
            MaxAge::Days(d) => write!(f, "{d} days"),
            MaxAge::Never => f.write_str("never"),
        }
    }
}

/// The decision for one archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Build the archive (pull and save).
    Build(BuildReason),
    /// Leave the archive as it is.
    Keep(KeepReason),
}

/// Why an archive is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildReason {
    /// No archive exists yet.
    Missing,
    /// The archive reached the maximum age.
    Expired { age: Duration },
    /// `--max-image-age 0`: every pass rebuilds.
    AlwaysRebuild,
}

/// Why an archive is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// Younger than the maximum age; `remaining` until it expires.
    Fresh { age: Duration, remaining: Duration },
    /// A negative maximum age disables refresh.
    RefreshDisabled,
}

impl Decision {
    /// Decides from the archive's modification time (`None` when there is no archive).
    ///
    /// A modification time in the future counts as age zero.
    pub fn for_archive(mtime: Option<SystemTime>, now: SystemTime, max_age: MaxAge) -> Decision {
        let Some(mtime) = mtime else {
            return Decision::Build(BuildReason::Missing);
        };
        let age = now.duration_since(mtime).unwrap_or(Duration::ZERO);
        match max_age {
            MaxAge::Never => Decision::Keep(KeepReason::RefreshDisabled),
            MaxAge::Always => Decision::Build(BuildReason::AlwaysRebuild),
            MaxAge::Days(_) => {
                let limit = max_age.limit().unwrap_or(Duration::MAX);
                if age >= limit {
                    Decision::Build(BuildReason::Expired { age })
                } else {
                    Decision::Keep(KeepReason::Fresh {
                        age,
                        remaining: limit - age,
                    })
                }
            }
        }
    }
}

impl fmt::Display for BuildReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildReason::Missing => f.write_str("no archive yet"),
            BuildReason::Expired { age } => write!(f, "archive is {} old", days(*age)),
            BuildReason::AlwaysRebuild => f.write_str("max image age 0 rebuilds every pass"),
        }
    }
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Fresh { age, remaining } => {
                write!(
                    f,
                    "archive is {} old, refresh in {}",
                    days(*age),
                    days(*remaining)
                )
            }
            KeepReason::RefreshDisabled => f.write_str("archive exists and refresh is disabled"),
        }
    }
}

/// A rough human duration, precise to the hour: `3d 4h`, `5h`, `<1h`.
fn days(d: Duration) -> String {
    let hours = d.as_secs() / 3600;
    match (hours / 24, hours % 24) {
        (0, 0) => "<1h".to_owned(),
        (0, h) => format!("{h}h"),
        (d, 0) => format!("{d}d"),
        (d, h) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now: SystemTime, age: Duration) -> Option<SystemTime> {
        Some(now - age)
    }

    #[test]
    fn max_age_from_days() {
        assert_eq!(MaxAge::from_days(0), MaxAge::Always);
        assert_eq!(MaxAge::from_days(-1), MaxAge::Never);
        assert_eq!(MaxAge::from_days(-365), MaxAge::Never);
        assert_eq!(MaxAge::from_days(7), MaxAge::Days(7));
        assert_eq!(MaxAge::from_days(i64::MAX), MaxAge::Days(u32::MAX));
    }

    #[test]
    fn missing_is_always_built() {
        let now = SystemTime::now();
        for max_age in [MaxAge::Always, MaxAge::Days(7), MaxAge::Never] {
            assert_eq!(
                Decision::for_archive(None, now, max_age),
                Decision::Build(BuildReason::Missing)
            );
        }
    }

    #[test]
    fn positive_age_rebuilds_at_or_after_the_limit() {
        let now = SystemTime::now();
        let seven = MaxAge::Days(7);
        let just_under = DAY * 7 - Duration::from_secs(1);
        assert!(matches!(
            Decision::for_archive(at(now, just_under), now, seven),
            Decision::Keep(KeepReason::Fresh { remaining, .. }) if remaining == Duration::from_secs(1)
        ));
        assert_eq!(
            Decision::for_archive(at(now, DAY * 7), now, seven),
            Decision::Build(BuildReason::Expired { age: DAY * 7 })
        );
        assert!(matches!(
            Decision::for_archive(at(now, DAY * 30), now, seven),
            Decision::Build(BuildReason::Expired { .. })
        ));
    }

    #[test]
    fn zero_rebuilds_every_pass() {
        let now = SystemTime::now();
        assert_eq!(
            Decision::for_archive(at(now, Duration::ZERO), now, MaxAge::Always),
            Decision::Build(BuildReason::AlwaysRebuild)
        );
    }

    #[test]
    fn negative_never_rebuilds_an_existing_archive() {
        let now = SystemTime::now();
        assert_eq!(
            Decision::for_archive(at(now, DAY * 10_000), now, MaxAge::Never),
            Decision::Keep(KeepReason::RefreshDisabled)
        );
    }

    #[test]
    fn future_mtime_counts_as_new() {
        let now = SystemTime::now();
        let future = Some(now + DAY);
        assert!(matches!(
            Decision::for_archive(future, now, MaxAge::Days(1)),
            Decision::Keep(KeepReason::Fresh {
                age: Duration::ZERO,
                ..
            })
        ));
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            BuildReason::Expired {
                age: DAY * 8 + Duration::from_secs(7200)
            }
            .to_string(),
            "archive is 8d 2h old"
        );
        assert_eq!(
            KeepReason::Fresh {
                age: Duration::from_secs(60),
                remaining: DAY * 7
            }
            .to_string(),
            "archive is <1h old, refresh in 7d"
        );
    }
}
