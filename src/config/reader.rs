//! Reading variables: each problem is recorded with the variable's name, and reading goes
//! on, so that every bad variable is reported at once.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// One bad setting: the variable's name and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub name: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.name, self.problem)
    }
}

/// A setting's value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?}: expected a duration like 500ms, 30s, 5m, 1h")]
    NotADuration(String),
    #[error("{raw:?}: unknown unit {unit:?} (use ms, s, m, h or d)")]
    UnknownUnit { raw: String, unit: String },
    #[error("{0:?}: not an IP address or CIDR")]
    NotAnAddress(String),
    #[error("{0:?}: bad prefix length")]
    BadPrefix(String),
}

/// Collects errors while parsing so that all of them are reported together.
pub(super) struct Reader<'a> {
    pub vars: &'a HashMap<String, String>,
    pub errors: Vec<ConfigError>,
}

impl Reader<'_> {
    pub fn string(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    pub fn parse<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: std::fmt::Display,
    {
        match self.string(name) {
            None => default,
            Some(raw) => match raw.parse::<T>() {
                Ok(v) => v,
                Err(e) => {
                    self.fail(name, format!("{raw:?}: {e}"));
                    default
                }
            },
        }
    }

    pub fn positive(&mut self, name: &str, default: usize) -> usize {
        let v = self.parse(name, default);
        if v == 0 {
            self.fail(name, "must be greater than 0".into());
            return default;
        }
        v
    }

    pub fn duration(&mut self, name: &str, default: Duration) -> Duration {
        match self.string(name) {
            None => default,
            Some(raw) => parse_duration(&raw).unwrap_or_else(|e| {
                self.fail(name, e.to_string());
                default
            }),
        }
    }

    pub fn fail(&mut self, name: &str, problem: String) {
        self.errors.push(ConfigError { name: name.to_string(), problem });
    }
}

/// `500ms`, `30s`, `5m`, `1h`, `7d`, or bare seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, ValueError> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits.parse().map_err(|_| ValueError::NotADuration(raw.into()))?;
    let d = match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return Err(ValueError::UnknownUnit { raw: raw.into(), unit: unit.into() }),
    };
    Ok(d)
}
