//! Bar timeframes: what people type, checked and mapped to the form the server expects.
//!
//! The server knows minutes as bare digits (`1`, `5`, `60`, `240`), seconds, days, weeks and
//! months with an upper-case unit (`5S`, `1D`, `1W`, `3M`). Lower-case forms such as `15m` or
//! `1h` make it fail the whole session, so they are mapped here before anything is sent:
//!
//! | typed | canonical | range |
//! | --- | --- | --- |
//! | `NS`, `Ns` | `NS` (seconds) | 1 ..= 59 |
//! | `N`, `Nm` | `N` (minutes) | 1 ..= 1440 |
//! | `NH`, `Nh` | `N*60` (minutes) | up to 24 hours |
//! | `D`, `ND`, `Nd` | `ND` (days) | 1 ..= 365 |
//! | `W`, `NW`, `Nw` | `NW` (weeks) | 1 ..= 52 |
//! | `M`, `NM` | `NM` (months) | 1 ..= 12 |
//!
//! Upper-case `M` is months and lower-case `m` minutes, as on TradingView. The server accepts
//! both `D` and `1D` (`W`/`1W`, `M`/`1M`); the canonical form always carries the count (`1D`).
//! Leading zeros are accepted (`05` is `5`); signs, spaces, fractions and other units are not.
//!
//! ```
//! use tickwire_core::timeframe::Timeframe;
//!
//! let hourly: Timeframe = "1h".parse().unwrap();
//! assert_eq!(hourly.as_str(), "60");
//! assert_eq!(Timeframe::parse("D").unwrap().as_str(), "1D");
//! assert!(Timeframe::parse("15min").is_err());
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

const SECONDS_PER_MINUTE: u64 = 60;
const SECONDS_PER_DAY: u64 = 86_400;
const SECONDS_PER_WEEK: u64 = 7 * SECONDS_PER_DAY;

/// The unit of a [`Timeframe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeframeUnit {
    /// Seconds, `NS` (1 ..= 59).
    Second,
    /// Minutes, bare digits (1 ..= 1440).
    Minute,
    /// Days, `ND` (1 ..= 365).
    Day,
    /// Weeks, `NW` (1 ..= 52).
    Week,
    /// Calendar months, `NM` (1 ..= 12).
    Month,
}

impl TimeframeUnit {
    /// The largest count accepted for this unit.
    pub const fn max_count(self) -> u32 {
        match self {
            TimeframeUnit::Second => 59,
            TimeframeUnit::Minute => 1_440,
            TimeframeUnit::Day => 365,
            TimeframeUnit::Week => 52,
            TimeframeUnit::Month => 12,
        }
    }

    /// The unit's name in the plural, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            TimeframeUnit::Second => "seconds",
            TimeframeUnit::Minute => "minutes",
            TimeframeUnit::Day => "days",
            TimeframeUnit::Week => "weeks",
            TimeframeUnit::Month => "months",
        }
    }

    /// The suffix of the canonical form (`""` for minutes).
    const fn suffix(self) -> &'static str {
        match self {
            TimeframeUnit::Second => "S",
            TimeframeUnit::Minute => "",
            TimeframeUnit::Day => "D",
            TimeframeUnit::Week => "W",
            TimeframeUnit::Month => "M",
        }
    }
}

/// A bar timeframe in the server's canonical form (`1`, `60`, `5S`, `1D`, `1W`, `3M`).
///
/// ```
/// use tickwire_core::timeframe::{Timeframe, TimeframeUnit};
///
/// let four_hours = Timeframe::parse("4h").unwrap();
/// assert_eq!(four_hours.to_string(), "240");
/// assert_eq!(four_hours.unit(), TimeframeUnit::Minute);
/// assert_eq!(four_hours.count(), 240);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timeframe {
    unit: TimeframeUnit,
    count: u32,
    canonical: String,
}

/// What was wrong with a timeframe, without the text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeframeErrorKind {
    /// Nothing given.
    Empty,
    /// The count is not plain digits, or the unit is not one of `S s m H h D d W w M`.
    Malformed,
    /// A count of zero.
    Zero,
    /// The count (after hours became minutes) is past the unit's maximum, or does not fit.
    TooLarge {
        /// The unit the count is in.
        unit: TimeframeUnit,
    },
}

/// A timeframe that is not valid; its message names the problem and lists the valid forms.
///
/// ```
/// let error = tickwire_core::timeframe::Timeframe::parse("7X").unwrap_err();
/// assert!(error.to_string().starts_with("timeframe \"7X\" is not valid"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timeframe {input:?} is not valid{}: use {}", reason(.kind), VALID_FORMS)]
pub struct TimeframeError {
    input: String,
    kind: TimeframeErrorKind,
}

/// Every form [`Timeframe::parse`] accepts, as listed in [`TimeframeError`]'s message.
pub const VALID_FORMS: &str = "seconds 1S\u{2026}59S, minutes 1, 5, 15, 30, 45, 60, 120, 240 \
     (or 1m, 5m, 1h, 4h; up to 1440 = 24h), days 1D (1d; up to 365D), weeks 1W (1w; up to 52W), \
     months 1M (up to 12M)";

/// Longest piece of the rejected text an error keeps.
const MAX_ECHO_CHARS: usize = 32;

fn reason(kind: &TimeframeErrorKind) -> String {
    match kind {
        TimeframeErrorKind::Empty => " (it is empty)".to_owned(),
        TimeframeErrorKind::Malformed => String::new(),
        TimeframeErrorKind::Zero => " (the count must be at least 1)".to_owned(),
        TimeframeErrorKind::TooLarge { unit } => {
            format!(" (more than {} {})", unit.max_count(), unit.name())
        }
    }
}

impl TimeframeError {
    fn new(input: &str, kind: TimeframeErrorKind) -> TimeframeError {
        let input = match input.char_indices().nth(MAX_ECHO_CHARS) {
            Some((end, _)) => format!("{}\u{2026}", input.get(..end).unwrap_or_default()),
            None => input.to_owned(),
        };
        TimeframeError { input, kind }
    }

    /// The rejected text (cut after 32 characters).
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What was wrong.
    pub fn kind(&self) -> &TimeframeErrorKind {
        &self.kind
    }
}

impl Timeframe {
    /// Checks `text` and maps it to the server's form; see the [module docs](self) for what is
    /// accepted.
    ///
    /// ```
    /// use tickwire_core::timeframe::Timeframe;
    ///
    /// for (typed, sent) in [("5m", "5"), ("1H", "60"), ("1d", "1D"), ("W", "1W"), ("3M", "3M")] {
    ///     assert_eq!(Timeframe::parse(typed).unwrap().as_str(), sent);
    /// }
    /// assert!(Timeframe::parse("25h").is_err()); // 1500 minutes: more than a day
    /// ```
    pub fn parse(text: &str) -> Result<Timeframe, TimeframeError> {
        let fail = |kind| TimeframeError::new(text, kind);
        if text.is_empty() {
            return Err(fail(TimeframeErrorKind::Empty));
        }
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, suffix) = text.split_at(digits_end);
        // (unit, multiplier into that unit, whether the count may be left out)
        let (unit, multiplier, bare) = match suffix {
            "" => (TimeframeUnit::Minute, 1, false),
            "m" => (TimeframeUnit::Minute, 1, false),
            "S" | "s" => (TimeframeUnit::Second, 1, false),
            "H" | "h" => (TimeframeUnit::Minute, 60, false),
            "D" => (TimeframeUnit::Day, 1, true),
            "d" => (TimeframeUnit::Day, 1, false),
            "W" => (TimeframeUnit::Week, 1, true),
            "w" => (TimeframeUnit::Week, 1, false),
            "M" => (TimeframeUnit::Month, 1, true),
            _ => return Err(fail(TimeframeErrorKind::Malformed)),
        };
        let count = if digits.is_empty() {
            if !bare {
                return Err(fail(TimeframeErrorKind::Malformed));
            }
            1
        } else {
            // Only ASCII digits here, so the one failure left is overflow.
            let count: u32 = digits
                .parse()
                .map_err(|_| fail(TimeframeErrorKind::TooLarge { unit }))?;
            count
                .checked_mul(multiplier)
                .ok_or_else(|| fail(TimeframeErrorKind::TooLarge { unit }))?
        };
        Timeframe::new(unit, count).map_err(fail)
    }

    /// The timeframe of `count` `unit`s, if the count is in the unit's range (1 ..=
    /// [`TimeframeUnit::max_count`]).
    ///
    /// ```
    /// use tickwire_core::timeframe::{Timeframe, TimeframeUnit};
    ///
    /// assert_eq!(Timeframe::of(TimeframeUnit::Week, 2).unwrap().as_str(), "2W");
    /// assert!(Timeframe::of(TimeframeUnit::Month, 13).is_none());
    /// ```
    pub fn of(unit: TimeframeUnit, count: u32) -> Option<Timeframe> {
        Timeframe::new(unit, count).ok()
    }

    fn new(unit: TimeframeUnit, count: u32) -> Result<Timeframe, TimeframeErrorKind> {
        if count == 0 {
            return Err(TimeframeErrorKind::Zero);
        }
        if count > unit.max_count() {
            return Err(TimeframeErrorKind::TooLarge { unit });
        }
        Ok(Timeframe {
            unit,
            count,
            canonical: format!("{count}{}", unit.suffix()),
        })
    }

    /// The server's form, as sent in `create_series`.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The unit.
    pub fn unit(&self) -> TimeframeUnit {
        self.unit
    }

    /// How many units one bar spans.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The length of one bar, for the fixed-length units (seconds, minutes, days, weeks);
    /// `None` for months.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tickwire_core::timeframe::Timeframe;
    ///
    /// assert_eq!(Timeframe::parse("4h").unwrap().period(), Some(Duration::from_secs(14_400)));
    /// assert_eq!(Timeframe::parse("1M").unwrap().period(), None);
    /// ```
    pub fn period(&self) -> Option<Duration> {
        self.fixed_seconds().map(Duration::from_secs)
    }

    fn fixed_seconds(&self) -> Option<u64> {
        let unit_seconds = match self.unit {
            TimeframeUnit::Second => 1,
            TimeframeUnit::Minute => SECONDS_PER_MINUTE,
            TimeframeUnit::Day => SECONDS_PER_DAY,
            TimeframeUnit::Week => SECONDS_PER_WEEK,
            TimeframeUnit::Month => return None,
        };
        u64::from(self.count).checked_mul(unit_seconds)
    }

    /// When a bar that opens at `bar_time` (Unix seconds, UTC) closes: one period later for
    /// the fixed-length units; for months the same day and time of day `count` calendar months
    /// later (UTC, the day clamped to the end of a shorter month). `None` only when the answer
    /// does not fit an `i64`.
    ///
    /// Days and weeks are fixed lengths, not trading sessions: a daily bar of an exchange that
    /// closes early still "ends" 24 hours after it opened.
    ///
    /// ```
    /// use tickwire_core::timeframe::Timeframe;
    ///
    /// let jan_2024 = 1_704_067_200; // 2024-01-01T00:00:00Z
    /// let feb_2024 = 1_706_745_600; // 2024-02-01T00:00:00Z
    /// assert_eq!(Timeframe::parse("1M").unwrap().period_end(jan_2024), Some(feb_2024));
    /// assert_eq!(Timeframe::parse("60").unwrap().period_end(jan_2024), Some(jan_2024 + 3_600));
    /// ```
    pub fn period_end(&self, bar_time: i64) -> Option<i64> {
        match self.fixed_seconds() {
            Some(seconds) => bar_time.checked_add(i64::try_from(seconds).ok()?),
            None => add_months(bar_time, self.count),
        }
    }
}

impl FromStr for Timeframe {
    type Err = TimeframeError;

    fn from_str(text: &str) -> Result<Timeframe, TimeframeError> {
        Timeframe::parse(text)
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.canonical)
    }
}

impl AsRef<str> for Timeframe {
    fn as_ref(&self) -> &str {
        &self.canonical
    }
}

/// `time` plus `months` calendar months, in UTC.
fn add_months(time: i64, months: u32) -> Option<i64> {
    const DAY: i64 = 86_400;
    let days = time.div_euclid(DAY);
    let second_of_day = time.rem_euclid(DAY);
    let (year, month, day) = civil_from_days(days)?;
    let month_index = year
        .checked_mul(12)?
        .checked_add(i64::from(month).checked_sub(1)?)?
        .checked_add(i64::from(months))?;
    let new_year = month_index.div_euclid(12);
    let new_month = u32::try_from(month_index.rem_euclid(12))
        .ok()?
        .checked_add(1)?;
    let new_day = day.min(days_in_month(new_year, new_month));
    days_from_civil(new_year, new_month, new_day)?
        .checked_mul(DAY)?
        .checked_add(second_of_day)
}

fn is_leap_year(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    // Years start in March, so the leap day is the last day of the year.
    let year = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400); // 0 ..= 399
    let shifted_month = i64::from(if month > 2 {
        month.checked_sub(3)?
    } else {
        month.checked_add(9)?
    }); // March = 0
    let day_of_year = shifted_month
        .checked_mul(153)?
        .checked_add(2)?
        .checked_div(5)?
        .checked_add(i64::from(day))?
        .checked_sub(1)?; // 0 ..= 365
    let day_of_era = year_of_era
        .checked_mul(365)?
        .checked_add(year_of_era.checked_div(4)?)?
        .checked_sub(year_of_era.checked_div(100)?)?
        .checked_add(day_of_year)?; // 0 ..= 146096
    era.checked_mul(146_097)?
        .checked_add(day_of_era)?
        .checked_sub(719_468)
}

/// The proleptic Gregorian date `(year, month, day)` of a day count since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> Option<(i64, u32, u32)> {
    let days = days.checked_add(719_468)?; // since 0000-03-01
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097); // 0 ..= 146096
    let year_of_era = day_of_era
        .checked_sub(day_of_era.checked_div(1_460)?)?
        .checked_add(day_of_era.checked_div(36_524)?)?
        .checked_sub(day_of_era.checked_div(146_096)?)?
        .checked_div(365)?; // 0 ..= 399
    let day_of_year = day_of_era.checked_sub(
        year_of_era
            .checked_mul(365)?
            .checked_add(year_of_era.checked_div(4)?)?
            .checked_sub(year_of_era.checked_div(100)?)?,
    )?; // 0 ..= 365
    let shifted_month = day_of_year
        .checked_mul(5)?
        .checked_add(2)?
        .checked_div(153)?; // March = 0
    let day = day_of_year
        .checked_sub(
            shifted_month
                .checked_mul(153)?
                .checked_add(2)?
                .checked_div(5)?,
        )?
        .checked_add(1)?;
    let month = if shifted_month < 10 {
        shifted_month.checked_add(3)?
    } else {
        shifted_month.checked_sub(9)?
    };
    let year = era
        .checked_mul(400)?
        .checked_add(year_of_era)?
        .checked_add(i64::from(month <= 2))?;
    Some((year, u32::try_from(month).ok()?, u32::try_from(day).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(text: &str) -> String {
        match Timeframe::parse(text) {
            Ok(timeframe) => timeframe.as_str().to_owned(),
            Err(error) => panic!("{text:?}: {error}"),
        }
    }

    #[test]
    fn timeframe_server_forms_are_kept() {
        for text in [
            "1", "3", "5", "15", "30", "45", "60", "120", "180", "240", "1440", "1S", "5S", "59S",
            "1D", "5D", "365D", "1W", "52W", "1M", "3M", "6M", "12M",
        ] {
            assert_eq!(canonical(text), text);
        }
    }

    #[test]
    fn timeframe_typed_forms_map_to_the_server_forms() {
        for (typed, sent) in [
            ("D", "1D"),
            ("W", "1W"),
            ("M", "1M"),
            ("1m", "1"),
            ("5m", "5"),
            ("1h", "60"),
            ("1H", "60"),
            ("2H", "120"),
            ("4h", "240"),
            ("24h", "1440"),
            ("1d", "1D"),
            ("1w", "1W"),
            ("1s", "1S"),
            ("15s", "15S"),
            ("05", "5"),
            ("01D", "1D"),
        ] {
            assert_eq!(canonical(typed), sent, "{typed}");
        }
    }

    #[test]
    fn timeframe_invalid_forms_are_refused_with_the_reason() {
        for (text, kind) in [
            ("", TimeframeErrorKind::Empty),
            ("7X", TimeframeErrorKind::Malformed),
            ("1.5", TimeframeErrorKind::Malformed),
            ("15min", TimeframeErrorKind::Malformed),
            ("m", TimeframeErrorKind::Malformed),
            ("h", TimeframeErrorKind::Malformed),
            ("d", TimeframeErrorKind::Malformed),
            ("S", TimeframeErrorKind::Malformed),
            ("+5", TimeframeErrorKind::Malformed),
            ("-5", TimeframeErrorKind::Malformed),
            (" 5", TimeframeErrorKind::Malformed),
            ("5 ", TimeframeErrorKind::Malformed),
            ("1M1", TimeframeErrorKind::Malformed),
            ("1Y", TimeframeErrorKind::Malformed),
            ("١", TimeframeErrorKind::Malformed),
            ("0", TimeframeErrorKind::Zero),
            ("0D", TimeframeErrorKind::Zero),
            ("0h", TimeframeErrorKind::Zero),
            (
                "1441",
                TimeframeErrorKind::TooLarge {
                    unit: TimeframeUnit::Minute,
                },
            ),
            (
                "25h",
                TimeframeErrorKind::TooLarge {
                    unit: TimeframeUnit::Minute,
                },
            ),
            (
                "60S",
                TimeframeErrorKind::TooLarge {
                    unit: TimeframeUnit::Second,
                },
            ),
            (
                "366D",
                TimeframeErrorKind::TooLarge {
                    unit: TimeframeUnit::Day,
                },
            ),
            (
                "53W",
                TimeframeErrorKind::TooLarge {
                    unit: TimeframeUnit::Week,
                },
            ),
            (
                "13M",
                TimeframeErrorKind::TooLarge {
                    unit: TimeframeUnit::Month,
                },
            ),
            (
                "99999999999999999999",
                TimeframeErrorKind::TooLarge {
                    unit: TimeframeUnit::Minute,
                },
            ),
            (
                "4294967295h",
                TimeframeErrorKind::TooLarge {
                    unit: TimeframeUnit::Minute,
                },
            ),
        ] {
            let error = Timeframe::parse(text).expect_err(text);
            assert_eq!(error.kind(), &kind, "{text:?}");
            assert_eq!(error.input(), text);
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("timeframe {text:?} is not valid")),
                "{message}"
            );
            assert!(
                message.ends_with(&format!(": use {VALID_FORMS}")),
                "{message}"
            );
        }
    }

    #[test]
    fn timeframe_error_message_reads_well() {
        assert_eq!(
            Timeframe::parse("7X").unwrap_err().to_string(),
            "timeframe \"7X\" is not valid: use seconds 1S…59S, minutes 1, 5, 15, 30, 45, 60, \
             120, 240 (or 1m, 5m, 1h, 4h; up to 1440 = 24h), days 1D (1d; up to 365D), weeks 1W \
             (1w; up to 52W), months 1M (up to 12M)"
        );
        assert!(
            Timeframe::parse("25h")
                .unwrap_err()
                .to_string()
                .starts_with("timeframe \"25h\" is not valid (more than 1440 minutes): use")
        );
        let long = "x".repeat(1_000);
        let error = Timeframe::parse(&long).unwrap_err();
        assert_eq!(error.input(), format!("{}…", "x".repeat(32)));
    }

    #[test]
    fn timeframe_from_str_display_and_accessors() {
        let timeframe: Timeframe = "4h".parse().unwrap();
        assert_eq!(timeframe.to_string(), "240");
        assert_eq!(timeframe.unit(), TimeframeUnit::Minute);
        assert_eq!(timeframe.count(), 240);
        assert_eq!(Timeframe::of(TimeframeUnit::Month, 3), "3M".parse().ok());
        assert_eq!(Timeframe::of(TimeframeUnit::Second, 0), None);
    }

    #[test]
    fn timeframe_periods() {
        let period = |text: &str| Timeframe::parse(text).unwrap().period();
        assert_eq!(period("5S"), Some(Duration::from_secs(5)));
        assert_eq!(period("15"), Some(Duration::from_secs(900)));
        assert_eq!(period("1h"), Some(Duration::from_secs(3_600)));
        assert_eq!(period("1D"), Some(Duration::from_secs(86_400)));
        assert_eq!(period("2W"), Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(period("1M"), None);
    }

    /// 2024-01-01T00:00:00Z.
    const JAN_2024: i64 = 1_704_067_200;

    fn date(year: i64, month: u32, day: u32) -> i64 {
        days_from_civil(year, month, day).unwrap() * 86_400
    }

    #[test]
    fn timeframe_civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(1969, 12, 31), Some(-1));
        assert_eq!(date(2024, 1, 1), JAN_2024);
        assert_eq!(civil_from_days(0), Some((1970, 1, 1)));
        assert_eq!(civil_from_days(19_782), Some((2024, 2, 29)));
        assert_eq!(civil_from_days(-719_468), Some((0, 3, 1)));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2023, 2), 28);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
    }

    #[test]
    fn timeframe_period_end() {
        let end = |text: &str, time| Timeframe::parse(text).unwrap().period_end(time);
        assert_eq!(end("1", JAN_2024), Some(JAN_2024 + 60));
        assert_eq!(end("5S", JAN_2024), Some(JAN_2024 + 5));
        assert_eq!(end("1D", JAN_2024), Some(JAN_2024 + 86_400));
        assert_eq!(end("1W", JAN_2024), Some(JAN_2024 + 7 * 86_400));
        assert_eq!(end("1M", JAN_2024), Some(date(2024, 2, 1)));
        assert_eq!(end("1M", date(2024, 2, 1)), Some(date(2024, 3, 1)));
        assert_eq!(end("3M", date(2023, 11, 1)), Some(date(2024, 2, 1)));
        assert_eq!(end("12M", date(2023, 12, 1)), Some(date(2024, 12, 1)));
        assert_eq!(end("1M", date(2024, 1, 31)), Some(date(2024, 2, 29)));
        assert_eq!(end("1M", date(1969, 12, 1)), Some(0));
        // The time of day is kept (bars of exchanges west of UTC open after midnight).
        assert_eq!(
            end("1M", date(2024, 1, 1) + 5 * 3_600),
            Some(date(2024, 2, 1) + 5 * 3_600)
        );
        assert_eq!(end("1", i64::MAX), None);
        assert_eq!(end("1M", i64::MAX), None);
        let _ = end("1M", i64::MIN);
    }

    fn any_timeframe() -> impl Strategy<Value = Timeframe> {
        prop_oneof![
            Just(TimeframeUnit::Second),
            Just(TimeframeUnit::Minute),
            Just(TimeframeUnit::Day),
            Just(TimeframeUnit::Week),
            Just(TimeframeUnit::Month),
        ]
        .prop_flat_map(|unit| (Just(unit), 1..=unit.max_count()))
        .prop_map(|(unit, count)| Timeframe::of(unit, count).unwrap())
    }

    proptest! {
        #[test]
        fn timeframe_canonical_forms_parse_back_to_themselves(timeframe in any_timeframe()) {
            let again = Timeframe::parse(timeframe.as_str()).unwrap();
            prop_assert_eq!(again.as_str(), timeframe.as_str());
            prop_assert_eq!(&again, &timeframe);
        }

        #[test]
        fn timeframe_parse_never_panics(text in any::<String>()) {
            if let Ok(timeframe) = Timeframe::parse(&text) {
                prop_assert_eq!(Timeframe::parse(timeframe.as_str()), Ok(timeframe.clone()));
            }
        }

        #[test]
        fn timeframe_parse_never_panics_on_timeframe_like_text(text in "[0-9]{0,12}[SsmHhDdWwMX.]?[0-9]?") {
            if let Ok(timeframe) = Timeframe::parse(&text) {
                prop_assert_eq!(Timeframe::parse(timeframe.as_str()), Ok(timeframe.clone()));
            }
        }

        #[test]
        fn timeframe_civil_round_trip(days in -100_000_000i64..100_000_000) {
            let (year, month, day) = civil_from_days(days).unwrap();
            prop_assert!((1..=12).contains(&month));
            prop_assert!(day >= 1 && day <= days_in_month(year, month));
            prop_assert_eq!(days_from_civil(year, month, day), Some(days));
        }

        #[test]
        fn timeframe_period_end_is_after_the_start(timeframe in any_timeframe(), time in -10_000_000_000i64..10_000_000_000) {
            let end = timeframe.period_end(time).unwrap();
            prop_assert!(end > time);
            if let Some(period) = timeframe.period() {
                prop_assert_eq!(end - time, period.as_secs() as i64);
            } else {
                // Between count * 28 and count * 31 days.
                let count = i64::from(timeframe.count());
                prop_assert!(end - time >= count * 28 * 86_400 && end - time <= count * 31 * 86_400);
            }
        }

        #[test]
        fn timeframe_period_end_never_panics(timeframe in any_timeframe(), time in any::<i64>()) {
            let _ = timeframe.period_end(time);
        }
    }
}
