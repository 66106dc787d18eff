//! The build's single notion of time: SOURCE_DATE_EPOCH semantics.

use std::fmt;

/// Seconds since 1970-01-01 UTC used for every timestamp in an image.
///
/// Always within `0..=Epoch::MAX`, checked once where the value comes in, so every writer can
/// take it as it is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
pub struct Epoch(i64);

/// Why an epoch value was refused.
#[derive(Debug, thiserror::Error)]
#[error("epoch {0:?} is not a whole number of seconds since 1970 from 0 to {max}", max = Epoch::MAX.0)]
pub struct EpochError(pub String);

impl Epoch {
    /// 1970-01-01T00:00:00Z, the epoch when nothing chooses one.
    pub const ZERO: Epoch = Epoch(0);
    /// The latest epoch: the largest mtime the 11 octal digits of a tar header hold.
    pub const MAX: Epoch = Epoch(0o777_7777_7777);

    /// `seconds` since 1970, if within `0..=Epoch::MAX`.
    pub fn new(seconds: i64) -> Result<Epoch, EpochError> {
        if !(0..=Self::MAX.0).contains(&seconds) {
            return Err(EpochError(seconds.to_string()));
        }
        Ok(Epoch(seconds))
    }

    /// The epoch nearest to `seconds` within `0..=Epoch::MAX`: for constants and for formats
    /// whose own range is narrower.
    pub const fn saturating(seconds: i64) -> Epoch {
        if seconds < 0 {
            Epoch(0)
        } else if seconds > Self::MAX.0 {
            Self::MAX
        } else {
            Epoch(seconds)
        }
    }

    /// Picks the epoch: an explicit value, else `SOURCE_DATE_EPOCH`, else the recipe's, else 0.
    pub fn resolve(
        explicit: Option<i64>,
        env: Option<&str>,
        recipe: Option<Epoch>,
    ) -> Result<Epoch, EpochError> {
        if let Some(v) = explicit {
            return Epoch::new(v);
        }
        if let Some(raw) = env.filter(|s| !s.is_empty()) {
            let v = raw.trim().parse::<i64>().map_err(|_| EpochError(raw.to_string()))?;
            return Epoch::new(v);
        }
        Ok(recipe.unwrap_or(Epoch::ZERO))
    }

    /// Seconds since 1970.
    pub const fn seconds(self) -> i64 {
        self.0
    }

    /// Seconds since 1970, unsigned (an epoch is never before 1970).
    pub const fn unsigned_seconds(self) -> u64 {
        self.0.unsigned_abs()
    }

    /// The UTC calendar date and time of day of this instant.
    pub fn utc(&self) -> UtcTime {
        let secs = self.0.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(self.0.div_euclid(86_400));
        UtcTime { year, month, day, hour: secs / 3600, minute: secs / 60 % 60, second: secs % 60 }
    }

    /// RFC 3339 in UTC, e.g. `2023-11-14T22:13:20Z`.
    pub fn rfc3339(&self) -> String {
        let t = self.utc();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )
    }
}

/// A calendar date and time of day in UTC (proleptic Gregorian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl TryFrom<i64> for Epoch {
    type Error = EpochError;

    fn try_from(seconds: i64) -> Result<Epoch, EpochError> {
        Epoch::new(seconds)
    }
}

impl From<Epoch> for i64 {
    fn from(epoch: Epoch) -> i64 {
        epoch.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Epoch(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Epoch(1_700_000_000).rfc3339(), "2023-11-14T22:13:20Z");
        assert_eq!(Epoch(951_782_400).rfc3339(), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn precedence_is_flag_env_recipe_zero() {
        assert_eq!(Epoch::resolve(Some(5), Some("7"), Some(Epoch(9))).unwrap(), Epoch(5));
        assert_eq!(Epoch::resolve(None, Some("7"), Some(Epoch(9))).unwrap(), Epoch(7));
        assert_eq!(Epoch::resolve(None, None, Some(Epoch(9))).unwrap(), Epoch(9));
        assert_eq!(Epoch::resolve(None, None, None).unwrap(), Epoch(0));
        assert!(Epoch::resolve(None, Some("yesterday"), None).is_err());
        assert!(Epoch::resolve(Some(-1), None, None).is_err());
        assert!(Epoch::resolve(Some(Epoch::MAX.0 + 1), None, None).is_err());
    }

    #[test]
    fn a_negative_or_too_late_epoch_cannot_be_read() {
        assert_eq!(serde_json::from_str::<Epoch>("5").unwrap(), Epoch(5));
        assert!(serde_json::from_str::<Epoch>("-1").is_err());
        assert!(serde_json::from_str::<Epoch>("8589934592").is_err());
        assert_eq!(Epoch::saturating(-5), Epoch::ZERO);
        assert_eq!(Epoch::saturating(i64::MAX), Epoch::MAX);
    }
}
