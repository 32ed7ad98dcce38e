//! Timestamps: RFC 3339 text and the request metadata timestamp.

/// Milliseconds since the Unix epoch of an RFC 3339 time such as `2026-11-29T10:00:00.250Z` or
/// `2026-11-29T11:00:00+01:00`; `None` for anything else or a time before 1970.
///
/// ```
/// use agent_protocol_proto::convert::rfc3339_millis;
/// assert_eq!(rfc3339_millis("1970-01-01T00:00:01.5Z"), Some(1500));
/// assert_eq!(rfc3339_millis("2026-11-29T01:00:00+01:00"), rfc3339_millis("2026-11-29T00:00:00Z"));
/// assert_eq!(rfc3339_millis("yesterday"), None);
/// ```
pub fn rfc3339_millis(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let total = h * 60 + m;
            if *sign == b'+' {
                total
            } else {
                -total
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds.checked_mul(1000)?.checked_add(millis)?).ok()
}

/// The metadata timestamp as (`timestamp_ms`, extension text): a canonical non-zero decimal
/// travels as the number alone; anything else also travels as text.
pub(super) fn timestamp_to_proto(text: String) -> (u64, Option<String>) {
    let canonical_decimal =
        !text.is_empty() && text.bytes().all(|c| c.is_ascii_digit()) && !text.starts_with('0');
    if canonical_decimal {
        if let Ok(ms) = text.parse::<u64>() {
            return (ms, None);
        }
    }
    if text.is_empty() {
        return (0, None);
    }
    (rfc3339_millis(&text).unwrap_or(0), Some(text))
}

pub(super) fn timestamp_from_proto(ms: u64, text: Option<String>) -> String {
    match (text, ms) {
        (Some(text), _) => text,
        (None, 0) => String::new(),
        (None, ms) => ms.to_string(),
    }
}
