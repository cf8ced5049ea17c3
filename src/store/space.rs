//! The disk guard: never let a build push the archive file system below `--min-free`.
//!
//! The archive directory usually sits on the node's root disk (a hostPath), and filling that disk
//! gets pods evicted. Before a build the archive size is estimated from the image, and the build is
//! skipped with a clear error when the free space after it would fall below the floor. If the
//! estimate is wrong and the disk fills anyway, the write fails with ENOSPC, the temporary file
//! goes and the previous archive stays.

use std::fmt;
use std::path::Path;

/// The `--min-free` floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// An absolute number of bytes.
    Bytes(u64),
    /// A percentage of the file system's size.
    Percent(f64),
}

impl MinFree {
    /// Parses `10%`, `0`, `5368709120`, `5Gi`, `500MiB`, `2G`, `1.5GB`.
    ///
    /// Binary suffixes (`Ki`, `Mi`, `Gi`, `Ti`, optionally with a trailing `B`) are powers of 1024;
    /// decimal ones (`k`, `M`, `G`, `T`, optionally with `B`) powers of 1000, as in Kubernetes
    /// quantities.
    pub fn parse(s: &str) -> Result<MinFree, String> {
        let s = s.trim();
        if let Some(percent) = s.strip_suffix('%') {
            let value: f64 = percent.trim().parse().map_err(|_| format!("invalid percentage {s:?}"))?;
            if !(0.0..100.0).contains(&value) {
                return Err(format!("percentage {s:?} must be at least 0 and below 100"));
            }
            return Ok(MinFree::Percent(value));
        }
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: f64 = number.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "k" | "K" | "kB" | "KB" => 1000,
            "M" | "MB" => 1000u64.pow(2),
            "G" | "GB" => 1000u64.pow(3),
            "T" | "TB" => 1000u64.pow(4),
            "Ki" | "KiB" => 1 << 10,
            "Mi" | "MiB" => 1 << 20,
            "Gi" | "GiB" => 1 << 30,
            "Ti" | "TiB" => 1 << 40,
            other => {
                return Err(format!("unknown size unit {other:?} in {s:?} (use e.g. 10%, 5Gi, 500MiB, 2G)"));
            }
        };
        Ok(MinFree::Bytes((value * multiplier as f64) as u64))
    }

    /// Whether the guard is off (`--min-free 0`): builds go ahead whatever the estimate says.
    pub fn is_disabled(self) -> bool {
        matches!(self, MinFree::Bytes(0)) || matches!(self, MinFree::Percent(p) if p == 0.0)
    }

    /// The floor in bytes for a file system of `total` bytes.
    pub fn floor(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(bytes) => bytes,
            MinFree::Percent(p) => (total as f64 * p / 100.0).ceil() as u64,
        }
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFree::Bytes(b) => write!(f, "{}", crate::human::bytes(*b)),
            MinFree::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Free and total space of a file system, as an unprivileged process sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to this process.
    pub available: u64,
    /// Size of the file system.
    pub total: u64,
}

/// Why a build may not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    #[error(
        "not enough disk space in {dir}: the archive needs about {}, {} is available and --min-free keeps {} free",
        crate::human::bytes(*.needed), crate::human::bytes(*.available), crate::human::bytes(*.floor)
    )]
    BelowFloor { dir: String, needed: u64, available: u64, floor: u64 },
    #[error("cannot read the free space of {dir}: {message}")]
    Unknown { dir: String, message: String },
}

/// Reads the free space of the file system holding `path`.
pub fn space_of(path: &Path) -> Result<Space, SpaceError> {
    let stat = rustix::fs::statvfs(path)
        .map_err(|e| SpaceError::Unknown { dir: path.display().to_string(), message: e.to_string() })?;
    Ok(Space {
        available: stat.f_bavail.saturating_mul(stat.f_frsize),
        total: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

/// The archive size to expect for an image whose content is `image_size` bytes: the layer tars
/// add a header per file and padding, so leave a margin.
pub fn estimate_archive_size(image_size: u64) -> u64 {
    image_size + image_size / 50 + (1 << 20)
}

/// Checks that writing `needed` bytes leaves at least the floor free. Pure.
pub fn check(dir: &Path, space: Space, needed: u64, min_free: MinFree) -> Result<(), SpaceError> {
    let floor = min_free.floor(space.total);
    if space.available < needed.saturating_add(floor) {
        return Err(SpaceError::BelowFloor {
            dir: dir.display().to_string(),
            needed,
            available: space.available,
            floor,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_percentages() {
        assert_eq!(MinFree::parse("10%"), Ok(MinFree::Percent(10.0)));
        assert_eq!(MinFree::parse("0"), Ok(MinFree::Bytes(0)));
        assert_eq!(MinFree::parse("1024"), Ok(MinFree::Bytes(1024)));
        assert_eq!(MinFree::parse("5Gi"), Ok(MinFree::Bytes(5 << 30)));
        assert_eq!(MinFree::parse("500MiB"), Ok(MinFree::Bytes(500 << 20)));
        assert_eq!(MinFree::parse("2G"), Ok(MinFree::Bytes(2_000_000_000)));
        assert_eq!(MinFree::parse("1.5GB"), Ok(MinFree::Bytes(1_500_000_000)));
        for bad in ["", "ten", "10 %x", "5Q", "-1", "100%", "150%", "1..2G"] {
            assert!(MinFree::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn floors() {
        assert_eq!(MinFree::Percent(10.0).floor(1000), 100);
        assert_eq!(MinFree::Percent(0.5).floor(1001), 6);
        assert_eq!(MinFree::Bytes(7).floor(1000), 7);
    }

    #[test]
    fn check_keeps_the_floor() {
        let space = Space { available: 500, total: 1000 };
        let dir = Path::new("/d");
        assert!(check(dir, space, 400, MinFree::Percent(10.0)).is_ok());
        assert_eq!(
            check(dir, space, 401, MinFree::Percent(10.0)),
            Err(SpaceError::BelowFloor { dir: "/d".into(), needed: 401, available: 500, floor: 100 })
        );
        assert!(check(dir, space, 500, MinFree::Bytes(0)).is_ok());
    }

    #[test]
    fn estimate_has_a_margin() {
        assert!(estimate_archive_size(1 << 30) > 1 << 30);
        assert_eq!(estimate_archive_size(0), 1 << 20);
    }

    #[test]
    fn reads_this_file_system() {
        let space = space_of(Path::new("/")).unwrap();
        assert!(space.total > 0 && space.available <= space.total);
    }
}
