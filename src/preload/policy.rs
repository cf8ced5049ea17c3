//! What to do with an archive, decided from its modification time and `--max-image-age`.
//! Pure: the caller reads the clock and the file system.

use std::fmt;
use std::time::{Duration, SystemTime};

pub use crate::store::state::{ArchiveState, RecordState};

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

/// How an archive that reached `--max-image-age` is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshPolicy {
    /// Ask the registry for the reference's current digest; rebuild only if it changed.
    Digest,
    /// Pull and save again (the seed chart's behaviour).
    Rebuild,
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The archive, if it exists.
    pub archive: Option<ArchiveState>,
    /// Its record.
    pub record: &'a RecordState,
    /// Whether the reference pins a digest (its content can never change).
    pub pinned: bool,
    /// The current time.
    pub now: SystemTime,
    /// `--max-image-age`.
    pub max_age: MaxAge,
    /// `--refresh-policy`.
    pub policy: RefreshPolicy,
}

/// The decision for one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Build the archive (pull and save).
    Build(BuildReason),
    /// Ask the registry whether `digest` is still what the reference points to: if so the archive
    /// is current (only its time is refreshed), else rebuild.
    Check {
        /// The archive's age.
        age: Duration,
        /// The recorded digest.
        digest: String,
    },
    /// Leave the archive as it is.
    Keep(KeepReason),
}

/// Why an archive is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildReason {
    /// No archive exists yet.
    Missing,
    /// The archive does not match its record.
    Damaged(String),
    /// The archive reached the maximum age (rebuild policy, or no digest to compare).
    Expired { age: Duration },
    /// `--max-image-age 0` with the rebuild policy, or no digest to compare.
    AlwaysRebuild,
    /// The registry now serves different content for the reference.
    Changed { recorded: String, current: String },
    /// The archive holds another platform than the one now asked for.
    Platform { recorded: String, wanted: String },
}

/// Why an archive is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// Younger than the maximum age; `remaining` until it expires.
    Fresh { age: Duration, remaining: Duration },
    /// A negative maximum age disables refresh.
    RefreshDisabled,
    /// The reference pins a digest, so the recorded archive is current by construction.
    Pinned,
}

impl Decision {
    /// Decides what to do with one archive.
    ///
    /// A damaged archive (its size or a `verify` run disagrees with its record, or the record is
    /// unreadable) is rebuilt whatever its age; a missing one is built; otherwise the age rules
    /// apply, and at expiry the digest policy checks the registry when the record allows it.
    pub fn decide(input: &Inputs<'_>) -> Decision {
        let Some(archive) = input.archive else {
            return Decision::Build(BuildReason::Missing);
        };
        match input.record {
            RecordState::Unreadable(why) => {
                return Decision::Build(BuildReason::Damaged(format!("its record is unreadable: {why}")));
            }
            RecordState::Present { damaged: Some(why), .. } => {
                return Decision::Build(BuildReason::Damaged(why.clone()));
            }
            RecordState::Present { size, .. } if *size != archive.size => {
                return Decision::Build(BuildReason::Damaged(format!(
                    "it has {} bytes, its record says {size}",
                    archive.size
                )));
            }
            _ => {}
        }
        let age = input.now.duration_since(archive.modified).unwrap_or(Duration::ZERO);
        let expired = match input.max_age {
            MaxAge::Never => return Decision::Keep(KeepReason::RefreshDisabled),
            MaxAge::Always => BuildReason::AlwaysRebuild,
            MaxAge::Days(_) => {
                let limit = input.max_age.limit().unwrap_or(Duration::MAX);
                if age < limit {
                    return Decision::Keep(KeepReason::Fresh { age, remaining: limit - age });
                }
                BuildReason::Expired { age }
            }
        };
        match (input.policy, input.record) {
            (RefreshPolicy::Rebuild, _) => Decision::Build(expired),
            (RefreshPolicy::Digest, RecordState::Present { .. }) if input.pinned => {
                Decision::Keep(KeepReason::Pinned)
            }
            (RefreshPolicy::Digest, RecordState::Present { repo_digest: Some(digest), .. }) => {
                Decision::Check { age, digest: digest.clone() }
            }
            // Nothing recorded to compare with: rebuild, which writes a record.
            (RefreshPolicy::Digest, _) => Decision::Build(expired),
        }
    }
}

impl fmt::Display for BuildReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildReason::Missing => f.write_str("no archive yet"),
            BuildReason::Damaged(why) => write!(f, "the archive is damaged: {why}"),
            BuildReason::Expired { age } => write!(f, "archive is {} old", days(*age)),
            BuildReason::AlwaysRebuild => f.write_str("max image age 0 rebuilds every pass"),
            BuildReason::Changed { recorded, current } => {
                write!(f, "the registry now serves {current} (archive has {recorded})")
            }
            BuildReason::Platform { recorded, wanted } => {
                write!(f, "the archive holds {recorded}, {wanted} is wanted")
            }
        }
    }
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Fresh { age, remaining } => {
                write!(f, "archive is {} old, refresh in {}", days(*age), days(*remaining))
            }
            KeepReason::RefreshDisabled => f.write_str("archive exists and refresh is disabled"),
            KeepReason::Pinned => f.write_str("the reference pins a digest, so the archive cannot be stale"),
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

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn recorded(size: u64) -> RecordState {
        RecordState::Present { size, repo_digest: Some(DIGEST.into()), damaged: None, platform: None }
    }

    fn decide(
        age: Option<Duration>,
        record: &RecordState,
        max_age: MaxAge,
        policy: RefreshPolicy,
    ) -> Decision {
        let now = SystemTime::now();
        Decision::decide(&Inputs {
            archive: age.map(|age| ArchiveState { modified: now - age, size: 100 }),
            record,
            pinned: false,
            now,
            max_age,
            policy,
        })
    }

    use RefreshPolicy::{Digest, Rebuild};

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
        for max_age in [MaxAge::Always, MaxAge::Days(7), MaxAge::Never] {
            for policy in [Digest, Rebuild] {
                assert_eq!(
                    decide(None, &RecordState::Missing, max_age, policy),
                    Decision::Build(BuildReason::Missing)
                );
            }
        }
    }

    #[test]
    fn positive_age_rebuilds_at_or_after_the_limit() {
        let seven = MaxAge::Days(7);
        let just_under = DAY * 7 - Duration::from_secs(1);
        assert!(matches!(
            decide(Some(just_under), &RecordState::Missing, seven, Rebuild),
            Decision::Keep(KeepReason::Fresh { remaining, .. }) if remaining == Duration::from_secs(1)
        ));
        assert_eq!(
            decide(Some(DAY * 7), &RecordState::Missing, seven, Rebuild),
            Decision::Build(BuildReason::Expired { age: DAY * 7 })
        );
        assert!(matches!(
            decide(Some(DAY * 30), &recorded(100), seven, Rebuild),
            Decision::Build(BuildReason::Expired { .. })
        ));
    }

    #[test]
    fn zero_rebuilds_every_pass_under_the_rebuild_policy() {
        assert_eq!(
            decide(Some(Duration::ZERO), &recorded(100), MaxAge::Always, Rebuild),
            Decision::Build(BuildReason::AlwaysRebuild)
        );
    }

    #[test]
    fn negative_never_rebuilds_an_existing_archive() {
        for policy in [Digest, Rebuild] {
            assert_eq!(
                decide(Some(DAY * 10_000), &recorded(100), MaxAge::Never, policy),
                Decision::Keep(KeepReason::RefreshDisabled)
            );
        }
    }

    #[test]
    fn future_mtime_counts_as_new() {
        let now = SystemTime::now();
        let decision = Decision::decide(&Inputs {
            archive: Some(ArchiveState { modified: now + DAY, size: 1 }),
            record: &RecordState::Missing,
            pinned: false,
            now,
            max_age: MaxAge::Days(1),
            policy: Digest,
        });
        assert!(matches!(decision, Decision::Keep(KeepReason::Fresh { age: Duration::ZERO, .. })));
    }

    #[test]
    fn digest_policy_checks_the_registry_at_expiry() {
        assert_eq!(
            decide(Some(DAY * 8), &recorded(100), MaxAge::Days(7), Digest),
            Decision::Check { age: DAY * 8, digest: DIGEST.into() }
        );
        assert!(matches!(
            decide(Some(Duration::ZERO), &recorded(100), MaxAge::Always, Digest),
            Decision::Check { .. }
        ));
        assert!(matches!(decide(Some(DAY), &recorded(100), MaxAge::Days(7), Digest), Decision::Keep(_)));
    }

    #[test]
    fn digest_policy_rebuilds_what_it_cannot_compare() {
        let no_digest = RecordState::Present { size: 100, repo_digest: None, damaged: None, platform: None };
        for record in [RecordState::Missing, no_digest] {
            assert_eq!(
                decide(Some(DAY * 8), &record, MaxAge::Days(7), Digest),
                Decision::Build(BuildReason::Expired { age: DAY * 8 })
            );
        }
    }

    #[test]
    fn pinned_references_are_never_stale() {
        let now = SystemTime::now();
        let record = recorded(100);
        let input = Inputs {
            archive: Some(ArchiveState { modified: now - DAY * 30, size: 100 }),
            record: &record,
            pinned: true,
            now,
            max_age: MaxAge::Days(7),
            policy: Digest,
        };
        assert_eq!(Decision::decide(&input), Decision::Keep(KeepReason::Pinned));
        let rebuild = Inputs { policy: Rebuild, ..input };
        assert!(matches!(Decision::decide(&rebuild), Decision::Build(BuildReason::Expired { .. })));
    }

    #[test]
    fn damaged_archives_are_rebuilt_whatever_their_age() {
        let fresh = Some(Duration::from_secs(60));
        for policy in [Digest, Rebuild] {
            for max_age in [MaxAge::Days(7), MaxAge::Never] {
                let wrong_size = decide(fresh, &recorded(99), max_age, policy);
                assert_eq!(
                    wrong_size,
                    Decision::Build(BuildReason::Damaged("it has 100 bytes, its record says 99".into()))
                );
                let marked = RecordState::Present {
                    size: 100,
                    repo_digest: None,
                    damaged: Some("sha256 mismatch".into()),
                    platform: None,
                };
                assert_eq!(
                    decide(fresh, &marked, max_age, policy),
                    Decision::Build(BuildReason::Damaged("sha256 mismatch".into()))
                );
                let unreadable = RecordState::Unreadable("bad json".into());
                assert!(matches!(
                    decide(fresh, &unreadable, max_age, policy),
                    Decision::Build(BuildReason::Damaged(_))
                ));
            }
        }
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            BuildReason::Expired { age: DAY * 8 + Duration::from_secs(7200) }.to_string(),
            "archive is 8d 2h old"
        );
        assert_eq!(
            KeepReason::Fresh { age: Duration::from_secs(60), remaining: DAY * 7 }.to_string(),
            "archive is <1h old, refresh in 7d"
        );
    }
}
