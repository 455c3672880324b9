//! RFC 3339 timestamps in UTC, for the access log and the admin API.

use std::time::SystemTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const MILLIS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `2026-11-22T03:57:00Z` (whole seconds).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    format_utc(t, SECONDS)
}

/// `2026-11-22T03:52:42.123Z` (milliseconds).
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    format_utc(t, MILLIS)
}

fn format_utc(t: SystemTime, format: &[BorrowedFormatItem<'_>]) -> String {
    // Formatting a complete UTC date-time into a String cannot fail; an empty string is
    // the harmless answer if it ever did.
    OffsetDateTime::from(t).format(format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_232_762_123);
        assert_eq!(rfc3339_millis(t), "2026-11-21T03:46:02.123Z");
        assert_eq!(rfc3339(t), "2026-11-21T03:46:02Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_320_000)),
            "2026-11-22T04:00:00Z"
        );
    }
}
