//! Dates as a repository's `Release` writes them (RFC 2822, as `Date` and `Valid-Until`) and
//! as kiln's messages show them.

/// `secs` since the Unix epoch as `2026-12-06 17:00:00 UTC`.
pub fn utc(secs: u64) -> String {
    i64::try_from(secs).ok().and_then(|s| chrono::DateTime::from_timestamp(s, 0)).map_or_else(
        || format!("{secs} seconds after 1970"),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// A `Release` date (`Sat, 06 Dec 2026 17:00:00 UTC`) as seconds since the Unix epoch
/// (before it: 0). apt writes the zone as `UTC`, which RFC 2822 spells `+0000`.
pub fn parse_release_date(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = match text.strip_suffix("UTC") {
        Some(head) => format!("{head}+0000"),
        None => text.to_string(),
    };
    let parsed = chrono::DateTime::parse_from_rfc2822(&text).ok()?;
    Some(u64::try_from(parsed.timestamp()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates_read_as_apt_writes_them() {
        assert_eq!(parse_release_date("Thu, 01 Jan 1970 00:01:00 UTC"), Some(60));
        assert_eq!(parse_release_date("Sun, 06 Dec 2026 17:00:00 +0100"), Some(1_796_572_800));
        assert_eq!(utc(1_796_572_800), "2026-12-06 16:00:00 UTC");
        assert_eq!(parse_release_date("tomorrow"), None);
    }
}
