//! Send windows, at the `delivery` stage: outside the configured hours (in a time zone, with
//! its daylight saving rules) a delivery attempt is deferred with `451 4.7.0 Outside the send
//! window until <next opening>`, and the host tries again with its delivery backoff; the
//! message leaves once an attempt falls inside a window, so within `delivery.retry_max` of
//! the opening. Held messages count toward `delivery.expire` like any deferred message, and
//! each held attempt is a `deferred` event.
//!
//! ```toml
//! [pipeline.step.config]
//! time_zone = "Europe/Madrid"
//! windows = [
//!   { days = ["mon", "tue", "wed", "thu", "fri"], start = "09:00", end = "17:30" },
//!   { days = ["sat"], start = "10:00", end = "12:00" },
//! ]
//! ```
//!
//! A window's `end` is exclusive; `start` equal to `end` is a whole day; a window may not
//! cross midnight (write two).

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime as Zoned};
use serde::Deserialize;
use sluice_plugin_sdk::{Filter, Message, Outcome, Stage, export_filter, host};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    days: Vec<String>,
    start: String,
    end: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    time_zone: String,
    windows: Vec<WindowFile>,
}

#[derive(Debug, Clone)]
pub struct Window {
    pub days: Vec<Weekday>,
    pub start: Time,
    pub end: Time,
}

pub struct Config {
    pub zone: TimeZone,
    pub windows: Vec<Window>,
}

fn weekday(s: &str) -> Result<Weekday, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return Err(format!("`{s}` is not a day (mon, tue, ...)")),
    })
}

fn time(s: &str) -> Result<Time, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not HH:MM"))?;
    let h: i8 = h.parse().map_err(|_| format!("`{s}` is not HH:MM"))?;
    let m: i8 = m.parse().map_err(|_| format!("`{s}` is not HH:MM"))?;
    Time::new(h, m, 0, 0).map_err(|e| format!("`{s}`: {e}"))
}

pub fn parse(json: &str) -> Result<Config, String> {
    let c: ConfigFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let zone =
        TimeZone::get(&c.time_zone).map_err(|e| format!("time_zone: `{}`: {e}", c.time_zone))?;
    if c.windows.is_empty() {
        return Err("windows: at least one".into());
    }
    let mut windows = Vec::new();
    for (i, w) in c.windows.iter().enumerate() {
        let days = w
            .days
            .iter()
            .map(|d| weekday(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("windows[{i}].days: {e}"))?;
        if days.is_empty() {
            return Err(format!("windows[{i}].days: at least one"));
        }
        let start = time(&w.start).map_err(|e| format!("windows[{i}].start: {e}"))?;
        let end = time(&w.end).map_err(|e| format!("windows[{i}].end: {e}"))?;
        if end < start {
            return Err(format!(
                "windows[{i}]: ends before it starts (a window may not cross midnight: write two)"
            ));
        }
        windows.push(Window { days, start, end });
    }
    Ok(Config {
        zone: zone.clone(),
        windows,
    })
}

impl Config {
    /// Whether `at` (local time in the zone) is inside a window.
    pub fn open_at(&self, at: &Zoned) -> bool {
        let t = at.time();
        self.windows.iter().any(|w| {
            w.days.contains(&at.weekday()) && (w.start == w.end || (w.start <= t && t < w.end))
        })
    }

    /// The next opening after `now` (within 8 days), in the zone.
    pub fn next_opening(&self, now: &Zoned) -> Option<Zoned> {
        let mut best: Option<Zoned> = None;
        for d in 0..8 {
            let date = now.date().checked_add(jiff::Span::new().days(d)).ok()?;
            for w in &self.windows {
                if !w.days.contains(&date.weekday()) {
                    continue;
                }
                let Ok(at) = date
                    .to_datetime(w.start)
                    .to_zoned_datetime(self.zone.clone())
                else {
                    continue;
                };
                if at > *now && best.as_ref().is_none_or(|b| at < *b) {
                    best = Some(at);
                }
            }
            if best.is_some() {
                break;
            }
        }
        best
    }
}

struct SendWindow;

impl Filter for SendWindow {
    const STAGES: &'static [Stage] = &[Stage::Delivery];

    fn configure(config: &str) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn on_delivery(_message: &Message, _recipients: Vec<String>) -> Outcome {
        let c = match parse(&host::config()) {
            Ok(c) => c,
            Err(e) => return Outcome::defer(451, "4.3.5", &format!("send window config: {e}")),
        };
        let now = Timestamp::now().to_zoned_datetime(c.zone.clone());
        if c.open_at(&now) {
            return Outcome::cont();
        }
        let until = c
            .next_opening(&now)
            .map(|z| z.strftime("%Y-%m-%d %H:%M %Z").to_string())
            .unwrap_or_else(|| "the next window".into());
        Outcome::defer(
            451,
            "4.7.0",
            &format!("Outside the send window until {until}"),
        )
    }
}

export_filter!(SendWindow, reusable);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        parse(
            r#"{"time_zone": "Europe/Madrid", "windows": [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:30"},
                {"days": ["sat"], "start": "10:00", "end": "10:00"}]}"#,
        )
        .unwrap()
    }

    fn at(s: &str) -> Zoned {
        s.parse().unwrap()
    }

    #[test]
    fn hours_in_the_zone_with_its_summer_time() {
        let c = config();
        // Monday 2026-03-30, CEST (UTC+2): 07:30 UTC is 09:30 in Madrid.
        assert!(c.open_at(&at("2026-03-30T09:30:00+02:00[Europe/Madrid]")));
        assert!(!c.open_at(&at("2026-03-30T08:59:00+02:00[Europe/Madrid]")));
        assert!(!c.open_at(&at("2026-03-30T17:30:00+02:00[Europe/Madrid]")));
        let utc = Timestamp::from_second(1_774_855_800).unwrap(); // 2026-03-30T07:30:00Z
        assert!(c.open_at(&utc.to_zoned_datetime(c.zone.clone())));
        // A whole Saturday, no Sunday.
        assert!(c.open_at(&at("2026-04-04T23:00:00+02:00[Europe/Madrid]")));
        assert!(!c.open_at(&at("2026-04-05T12:00:00+02:00[Europe/Madrid]")));
    }

    #[test]
    fn the_next_opening() {
        let c = config();
        let friday_evening = at("2026-04-03T18:00:00+02:00[Europe/Madrid]");
        let next = c.next_opening(&friday_evening).unwrap();
        assert_eq!(next.to_string(), "2026-04-04T10:00:00+02:00[Europe/Madrid]");
        let sunday = at("2026-04-05T12:00:00+02:00[Europe/Madrid]");
        assert_eq!(
            c.next_opening(&sunday).unwrap().to_string(),
            "2026-04-06T09:00:00+02:00[Europe/Madrid]"
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (json, want) in [
            (
                r#"{"time_zone": "Mars/Olympus", "windows": []}"#,
                "time_zone",
            ),
            (r#"{"time_zone": "UTC", "windows": []}"#, "windows"),
            (
                r#"{"time_zone": "UTC", "windows": [{"days": ["mon"], "start": "9", "end": "10:00"}]}"#,
                "windows[0].start",
            ),
            (
                r#"{"time_zone": "UTC", "windows": [{"days": ["funday"], "start": "09:00", "end": "10:00"}]}"#,
                "windows[0].days",
            ),
            (
                r#"{"time_zone": "UTC", "windows": [{"days": ["mon"], "start": "22:00", "end": "02:00"}]}"#,
                "cross midnight",
            ),
        ] {
            let e = parse(json).err().unwrap();
            assert!(e.contains(want), "{e}");
        }
    }
}
