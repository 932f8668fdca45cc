//! Date-times as Rebilly writes them, read into instants.
//!
//! Current records carry RFC 3339 (`2026-03-04T10:15:30Z`, `2026-03-04T10:15:30+01:00`), but
//! older accounts also hold `2017-05-26 18:59:51` (a space instead of `T`, often no zone) and
//! `2017-05-26 18:59:51+00:00`. Every one of those forms is read here, with or without
//! fractional seconds; a form without a zone is UTC. Anything else is not a date-time: callers
//! decide what that means (the event model counts it as absent, a filter refuses it).
//!
//! Instants are compared as Unix milliseconds ([`unix_ms`]): finer digits are dropped
//! (rounded down), so two times within the same millisecond are equal.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Reads an RFC 3339 date-time or one of the older forms described in the module header.
pub fn parse(text: &str) -> Option<OffsetDateTime> {
    let mut reader = Reader(text.as_bytes());
    let year = reader.digits(4)?;
    reader.expect(b'-')?;
    let month = reader.digits(2)?;
    reader.expect(b'-')?;
    let day = reader.digits(2)?;
    if !matches!(reader.take()?, b'T' | b't' | b' ') {
        return None;
    }
    let hour = reader.digits(2)?;
    reader.expect(b':')?;
    let minute = reader.digits(2)?;
    reader.expect(b':')?;
    let second = reader.digits(2)?;
    let nanosecond = reader.fraction()?;
    let offset = reader.offset()?;
    if !reader.0.is_empty() {
        return None;
    }
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date = Date::from_calendar_date(year as i32, month, u8::try_from(day).ok()?).ok()?;
    let time = Time::from_hms_nano(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
        nanosecond,
    )
    .ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

/// The instant as Unix milliseconds, rounded down.
pub fn unix_ms(time: OffsetDateTime) -> i64 {
    (time.unix_timestamp_nanos().div_euclid(1_000_000)) as i64
}

/// Reads [`parse`]'s forms straight into Unix milliseconds.
pub fn parse_unix_ms(text: &str) -> Option<i64> {
    parse(text).map(unix_ms)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.take()? == byte).then_some(())
    }

    fn digits(&mut self, count: usize) -> Option<u32> {
        let mut value = 0;
        for _ in 0..count {
            let digit = self.take()?;
            if !digit.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(digit - b'0');
        }
        Some(value)
    }

    /// `.123456` as nanoseconds; digits past the ninth are dropped.
    fn fraction(&mut self) -> Option<u32> {
        if self.peek() != Some(b'.') {
            return Some(0);
        }
        self.take();
        let mut nanos = 0;
        let mut count = 0;
        while let Some(digit) = self.peek().filter(u8::is_ascii_digit) {
            self.take();
            if count < 9 {
                nanos = nanos * 10 + u32::from(digit - b'0');
            }
            count += 1;
        }
        if count == 0 {
            return None;
        }
        Some(nanos * 10u32.pow(9u32.saturating_sub(count)))
    }

    /// `Z`, `+HH:MM`, `+HHMM` or `+HH`; no zone at all is UTC.
    fn offset(&mut self) -> Option<UtcOffset> {
        let sign: i8 = match self.peek() {
            None => return Some(UtcOffset::UTC),
            Some(b'Z' | b'z') => {
                self.take();
                return Some(UtcOffset::UTC);
            }
            Some(b'+') => 1,
            Some(b'-') => -1,
            Some(_) => return None,
        };
        self.take();
        let hours = self.digits(2)?;
        let minutes = match self.peek() {
            None => 0,
            Some(b':') => {
                self.take();
                self.digits(2)?
            }
            Some(_) => self.digits(2)?,
        };
        if hours > 23 || minutes > 59 {
            return None;
        }
        UtcOffset::from_hms(
            sign * i8::try_from(hours).ok()?,
            sign * i8::try_from(minutes).ok()?,
            0,
        )
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Option<i64> {
        parse_unix_ms(text)
    }

    #[test]
    fn rfc3339_and_rebillys_older_forms_name_the_same_instant() {
        let expected = Some(1_495_825_191_000); // 2017-05-26T18:59:51Z
        for text in [
            "2017-05-26T18:59:51Z",
            "2017-05-26t18:59:51z",
            "2017-05-26T20:59:51+02:00",
            "2017-05-26 18:59:51",
            "2017-05-26 18:59:51+00:00",
            "2017-05-26 18:59:51Z",
            "2017-05-26 16:59:51-0200",
            "2017-05-26 21:59:51+03",
            "2017-05-26T18:59:51",
        ] {
            assert_eq!(ms(text), expected, "{text}");
        }
    }

    #[test]
    fn fractional_seconds_of_any_length_round_down_to_the_millisecond() {
        assert_eq!(ms("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(ms("1970-01-01 00:00:01.123456789"), Some(1_123));
        assert_eq!(ms("1970-01-01T00:00:01.1239999999999Z"), Some(1_123));
        assert_eq!(ms("1969-12-31T23:59:59.9995Z"), Some(-1));
    }

    #[test]
    fn anything_else_is_not_a_date_time() {
        for text in [
            "",
            "null",
            "2017-05-26",
            "2017-05-26 18:59",
            "2017-13-26 18:59:51",
            "2017-02-30 18:59:51",
            "2017-05-26 24:00:00",
            "2017-05-26 18:59:51.",
            "2017-05-26 18:59:51 +00:00",
            "2017-05-26 18:59:51+25:00",
            "2017-05-26 18:59:51+01:60",
            "2017-05-26T18:59:51Zjunk",
            "26/05/2017 18:59:51",
            "1495825191",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
