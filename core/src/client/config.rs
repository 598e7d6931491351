//! Every tunable of the client, with the defaults the field has learned to use.

use std::time::Duration;

use thiserror::Error;

/// The real feed.
pub const DEFAULT_URL: &str = "wss://data.tradingview.com/socket.io/websocket?type=chart";
/// The token anonymous clients send.
pub const ANONYMOUS_TOKEN: &str = "unauthorized_user_token";
/// Quote fields requested when none are configured.
pub const DEFAULT_QUOTE_FIELDS: &[&str] = &[
    "lp",
    "lp_time",
    "ch",
    "chp",
    "volume",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "open_price",
    "high_price",
    "low_price",
    "prev_close_price",
    "update_mode",
    "current_session",
    "description",
    "currency_code",
];

/// The seed a [`Config`] without one falls back to when a `Client` is built directly; drivers
/// draw a seed from the operating system instead.
pub const FALLBACK_SEED: u64 = 0x7469_636b_7769_7265;

/// The longest duration any setting accepts.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Client configuration. `Config::default()` is ready to use; every field can also be set from
/// the environment with [`Config::from_env`].
///
/// ```
/// use std::time::Duration;
/// use tickwire_core::client::Config;
///
/// let config = Config { read_timeout: Duration::from_secs(20), ..Config::default() };
/// assert_eq!(config.idle_heartbeats, 5);
/// ```
#[derive(Clone, PartialEq)]
pub struct Config {
    /// WebSocket URL of the feed (`TICKWIRE_URL`).
    pub url: String,
    /// `Origin` header sent with the upgrade (`TICKWIRE_ORIGIN`).
    pub origin: String,
    /// Auth token sent first on every connection (`TICKWIRE_AUTH_TOKEN`).
    pub auth_token: String,
    /// Locale sent after the token, e.g. `("en", "US")`; `None` sends none (`TICKWIRE_LOCALE`, `en_US`).
    pub locale: Option<(String, String)>,
    /// Quote fields requested with `quote_set_fields` (`TICKWIRE_QUOTE_FIELDS`, comma-separated).
    pub quote_fields: Vec<String>,
    /// Time allowed for TCP, TLS and the WebSocket upgrade (`TICKWIRE_CONNECT_TIMEOUT`).
    pub connect_timeout: Duration,
    /// Time allowed from the open socket to the server's first packet (`TICKWIRE_HANDSHAKE_TIMEOUT`).
    pub handshake_timeout: Duration,
    /// A live connection with no packet at all for this long is dead (`TICKWIRE_READ_TIMEOUT`).
    pub read_timeout: Duration,
    /// Consecutive heartbeats with no data between them that mark a zombie link (`TICKWIRE_IDLE_HEARTBEATS`).
    pub idle_heartbeats: u32,
    /// No tick for this long on a connection with live subscriptions means reconnect (`TICKWIRE_DATA_SILENCE`).
    pub data_silence: Duration,
    /// How often the data-silence rule is checked (`TICKWIRE_HEALTH_INTERVAL`).
    pub health_interval: Duration,
    /// How long an acknowledged but quiet link must stay silent before the second zombie or
    /// data-silence verdict in a row; each further one waits [`liveness::QUIET_GROWTH`] times
    /// longer (`TICKWIRE_QUIET_RECHECK`). See [`liveness`] for every rule.
    ///
    /// [`liveness`]: super::liveness
    /// [`liveness::QUIET_GROWTH`]: super::liveness::QUIET_GROWTH
    pub quiet_recheck: Duration,
    /// The longest such wait (`TICKWIRE_QUIET_RECHECK_MAX`).
    pub quiet_recheck_max: Duration,
    /// An acknowledged connection that lasts this long resets the failure count; one that ends
    /// sooner counts as a failure, so a server that accepts and drops us cannot hold the client
    /// in a fixed-rate loop (`TICKWIRE_STABLE_AFTER`).
    pub stable_after: Duration,
    /// Time a blocked send may take before the driver treats the link as dead (`TICKWIRE_SEND_TIMEOUT`).
    pub send_timeout: Duration,
    /// Delay before the first retry after a working connection drops (`TICKWIRE_GRACE`).
    pub grace: Duration,
    /// First backoff delay after a failed attempt (`TICKWIRE_BACKOFF_INITIAL`).
    pub backoff_initial: Duration,
    /// Backoff cap (`TICKWIRE_BACKOFF_MAX`).
    pub backoff_max: Duration,
    /// Relative jitter applied to every delay, 0.0 to 1.0 (`TICKWIRE_JITTER`).
    pub jitter: f64,
    /// Consecutive failures that open the circuit breaker (`TICKWIRE_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// How long the open circuit waits before a half-open probe (`TICKWIRE_BREAKER_RECOVERY`).
    /// Each time the probe fails too, the wait doubles, up to `breaker_recovery_max`, so even an
    /// open circuit never settles into a fixed-rate loop.
    pub breaker_recovery: Duration,
    /// The longest wait of the open circuit (`TICKWIRE_BREAKER_RECOVERY_MAX`).
    pub breaker_recovery_max: Duration,
    /// Outbound commands allowed per minute (`TICKWIRE_RATE_LIMIT`).
    pub rate_limit_per_minute: u32,
    /// Commands that may go at once (`TICKWIRE_BURST`).
    pub burst: u32,
    /// Commands that may wait for the rate limit; beyond it they are dropped and reported (`TICKWIRE_MAX_QUEUED_COMMANDS`).
    pub max_queued_commands: usize,
    /// How long a history request may take (`TICKWIRE_HISTORY_TIMEOUT`).
    pub history_timeout: Duration,
    /// How long to wait for the application's fresh auth token after a rejection before going on
    /// without one (`TICKWIRE_TOKEN_TIMEOUT`).
    pub token_timeout: Duration,
    /// Rotate a connection cleanly after this age; `None` never (`TICKWIRE_MAX_AGE`, `0` = off).
    pub max_age: Option<Duration>,
    /// Largest packet accepted, in UTF-16 code units (`TICKWIRE_MAX_PACKET_SIZE`).
    pub max_packet_size: usize,
    /// Most quote symbols and most chart series kept in the desired state (`TICKWIRE_MAX_SUBSCRIPTIONS`).
    pub max_subscriptions: usize,
    /// Most bars one history request may collect (`TICKWIRE_MAX_HISTORY_BARS`).
    pub max_history_bars: usize,
    /// How long `auth_token` stays valid from the moment the client is built, when known (the
    /// JWT's `exp`): the client asks for the next one before then ([`super::AuthToken`]).
    pub auth_token_lifetime: Option<Duration>,
    /// Polling fallback; `None` (the default) never polls (`TICKWIRE_POLL_INTERVAL` enables it).
    pub polling: Option<PollingConfig>,
    /// Seed of the jitter and of the session ids: same seed, same decisions (`TICKWIRE_SEED`).
    ///
    /// `None` (the default) lets the driver draw one from the operating system for each client,
    /// so processes started together never retry in lockstep or share session ids. The core
    /// itself has no entropy: a `Client` built directly with `None` uses [`FALLBACK_SEED`].
    pub seed: Option<u64>,
}

/// The auth token is a secret: `Debug` shows its length, never its characters.
impl std::fmt::Debug for Config {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Config")
            .field("url", &self.url)
            .field("origin", &self.origin)
            .field("auth_token", &Redacted(&self.auth_token))
            .field("locale", &self.locale)
            .field("quote_fields", &self.quote_fields)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("idle_heartbeats", &self.idle_heartbeats)
            .field("data_silence", &self.data_silence)
            .field("health_interval", &self.health_interval)
            .field("quiet_recheck", &self.quiet_recheck)
            .field("quiet_recheck_max", &self.quiet_recheck_max)
            .field("stable_after", &self.stable_after)
            .field("send_timeout", &self.send_timeout)
            .field("grace", &self.grace)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("jitter", &self.jitter)
            .field("max_attempts", &self.max_attempts)
            .field("breaker_recovery", &self.breaker_recovery)
            .field("breaker_recovery_max", &self.breaker_recovery_max)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("burst", &self.burst)
            .field("max_queued_commands", &self.max_queued_commands)
            .field("history_timeout", &self.history_timeout)
            .field("token_timeout", &self.token_timeout)
            .field("max_age", &self.max_age)
            .field("max_packet_size", &self.max_packet_size)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("max_history_bars", &self.max_history_bars)
            .field("auth_token_lifetime", &self.auth_token_lifetime)
            .field("polling", &self.polling)
            .field("seed", &self.seed)
            .finish()
    }
}

/// A secret in `Debug` output: its length only.
pub(crate) struct Redacted<'a>(pub(crate) &'a str);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "<redacted, {} chars>", self.0.chars().count())
    }
}

/// When and how often to poll while the stream is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollingConfig {
    /// Time between poll requests.
    pub interval: Duration,
    /// Start polling once the stream has been unavailable this long (polling also starts when
    /// the circuit opens).
    pub unavailable_after: Duration,
    /// A poll with no answer this long has failed ([`super::PollErrorKind::Timeout`]); the
    /// next one waits for the backoff. One poll is in flight at most.
    pub timeout: Duration,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            interval: Duration::from_secs(10),
            unavailable_after: Duration::from_secs(30),
            timeout: Duration::from_secs(45),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: DEFAULT_URL.to_owned(),
            origin: "https://www.tradingview.com".to_owned(),
            auth_token: ANONYMOUS_TOKEN.to_owned(),
            locale: None,
            quote_fields: DEFAULT_QUOTE_FIELDS
                .iter()
                .map(|field| (*field).to_owned())
                .collect(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(15),
            idle_heartbeats: 5,
            data_silence: Duration::from_secs(30),
            health_interval: Duration::from_secs(10),
            quiet_recheck: Duration::from_secs(6 * 3600),
            quiet_recheck_max: Duration::from_secs(48 * 3600),
            stable_after: Duration::from_secs(30),
            send_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(2),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            jitter: 0.2,
            max_attempts: 3,
            breaker_recovery: Duration::from_secs(60),
            breaker_recovery_max: Duration::from_secs(600),
            rate_limit_per_minute: 60,
            burst: 10,
            max_queued_commands: 1024,
            history_timeout: Duration::from_secs(30),
            token_timeout: Duration::from_secs(10),
            max_age: None,
            max_packet_size: crate::codec::DEFAULT_MAX_PACKET_SIZE,
            max_subscriptions: 10_000,
            max_history_bars: 100_000,
            auth_token_lifetime: None,
            polling: None,
            seed: None,
        }
    }
}

/// A configuration value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// An environment variable held something unparsable.
    #[error("{name}={value:?}: {reason}")]
    Env {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A combination of values that cannot work.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Checks values that would make the client misbehave (zero rates, jitter outside 0..=1…).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first offending setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: &str| Err(ConfigError::Invalid(reason.to_owned()));
        if !(0.0..=1.0).contains(&self.jitter) {
            return invalid("jitter must be between 0 and 1");
        }
        if self.rate_limit_per_minute == 0 || self.burst == 0 {
            return invalid("rate limit and burst must be at least 1");
        }
        if self.idle_heartbeats == 0 || self.max_attempts == 0 {
            return invalid("idle heartbeats and max attempts must be at least 1");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return invalid("backoff initial must be positive and not above the backoff max");
        }
        if self.health_interval.is_zero()
            || self.read_timeout.is_zero()
            || self.connect_timeout.is_zero()
        {
            return invalid("health interval, read timeout and connect timeout must be positive");
        }
        if self
            .polling
            .is_some_and(|polling| polling.interval.is_zero() || polling.timeout.is_zero())
        {
            return invalid("poll interval and poll timeout must be positive");
        }
        let longest = [
            self.connect_timeout,
            self.handshake_timeout,
            self.read_timeout,
            self.data_silence,
            self.health_interval,
            self.send_timeout,
            self.grace,
            self.backoff_initial,
            self.backoff_max,
            self.breaker_recovery,
            self.breaker_recovery_max,
            self.history_timeout,
            self.token_timeout,
            self.max_age.unwrap_or_default(),
            self.quiet_recheck,
            self.quiet_recheck_max,
            self.stable_after,
            self.auth_token_lifetime.unwrap_or_default(),
            self.polling
                .map(|polling| polling.interval.max(polling.timeout))
                .unwrap_or_default(),
        ]
        .into_iter()
        .max()
        .unwrap_or_default();
        if longest > MAX_DURATION {
            return invalid("durations must not exceed 30 days");
        }
        if self.breaker_recovery_max < self.breaker_recovery {
            return invalid("breaker recovery must not be above the breaker recovery max");
        }
        if self.quiet_recheck.is_zero() || self.quiet_recheck_max < self.quiet_recheck {
            return invalid("quiet recheck must be positive and not above the quiet recheck max");
        }
        if self.max_queued_commands == 0 {
            return invalid("the command queue must hold at least one command");
        }
        Ok(())
    }

    /// The defaults, overridden by every `TICKWIRE_*` variable that is set. Durations use
    /// humantime-like forms: `1500ms`, `15s`, `2m`, `1h`, or plain seconds.
    ///
    /// # Errors
    /// [`ConfigError::Env`] for a variable that does not parse, [`ConfigError::Invalid`] when the
    /// result does not validate.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup` (for tests and embedding).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tickwire_core::client::Config;
    ///
    /// let config = Config::from_lookup(|name| (name == "TICKWIRE_READ_TIMEOUT").then(|| "20s".to_owned())).unwrap();
    /// assert_eq!(config.read_timeout, Duration::from_secs(20));
    /// ```
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let env = |name: &str| lookup(name).map(|value| (name.to_owned(), value));
        if let Some((_, value)) = env("TICKWIRE_URL") {
            config.url = value;
        }
        if let Some((_, value)) = env("TICKWIRE_ORIGIN") {
            config.origin = value;
        }
        if let Some((_, value)) = env("TICKWIRE_AUTH_TOKEN") {
            config.auth_token = value;
        }
        if let Some((name, value)) = env("TICKWIRE_LOCALE") {
            let Some((language, country)) = value.split_once(['_', '-']) else {
                return Err(env_error(&name, &value, "expected a locale such as en_US"));
            };
            config.locale = Some((language.to_owned(), country.to_owned()));
        }
        if let Some((_, value)) = env("TICKWIRE_QUOTE_FIELDS") {
            config.quote_fields = value
                .split(',')
                .map(str::trim)
                .filter(|field| !field.is_empty())
                .map(str::to_owned)
                .collect();
        }
        let durations: [(&str, &mut Duration); 16] = [
            ("TICKWIRE_CONNECT_TIMEOUT", &mut config.connect_timeout),
            ("TICKWIRE_HANDSHAKE_TIMEOUT", &mut config.handshake_timeout),
            ("TICKWIRE_READ_TIMEOUT", &mut config.read_timeout),
            ("TICKWIRE_DATA_SILENCE", &mut config.data_silence),
            ("TICKWIRE_HEALTH_INTERVAL", &mut config.health_interval),
            ("TICKWIRE_QUIET_RECHECK", &mut config.quiet_recheck),
            ("TICKWIRE_QUIET_RECHECK_MAX", &mut config.quiet_recheck_max),
            ("TICKWIRE_STABLE_AFTER", &mut config.stable_after),
            ("TICKWIRE_SEND_TIMEOUT", &mut config.send_timeout),
            ("TICKWIRE_GRACE", &mut config.grace),
            ("TICKWIRE_BACKOFF_INITIAL", &mut config.backoff_initial),
            ("TICKWIRE_BACKOFF_MAX", &mut config.backoff_max),
            ("TICKWIRE_BREAKER_RECOVERY", &mut config.breaker_recovery),
            (
                "TICKWIRE_BREAKER_RECOVERY_MAX",
                &mut config.breaker_recovery_max,
            ),
            ("TICKWIRE_HISTORY_TIMEOUT", &mut config.history_timeout),
            ("TICKWIRE_TOKEN_TIMEOUT", &mut config.token_timeout),
        ];
        for (name, slot) in durations {
            if let Some(value) = lookup(name) {
                *slot =
                    parse_duration(&value).map_err(|reason| env_error(name, &value, &reason))?;
            }
        }
        if let Some((name, value)) = env("TICKWIRE_MAX_AGE") {
            let age = parse_duration(&value).map_err(|reason| env_error(&name, &value, &reason))?;
            config.max_age = (!age.is_zero()).then_some(age);
        }
        if let Some((name, value)) = env("TICKWIRE_POLL_INTERVAL") {
            let interval =
                parse_duration(&value).map_err(|reason| env_error(&name, &value, &reason))?;
            let mut polling = PollingConfig {
                interval,
                ..PollingConfig::default()
            };
            if let Some((after_name, after)) = env("TICKWIRE_POLL_AFTER") {
                polling.unavailable_after = parse_duration(&after)
                    .map_err(|reason| env_error(&after_name, &after, &reason))?;
            }
            config.polling = Some(polling);
        }
        parse_number(
            &env,
            "TICKWIRE_IDLE_HEARTBEATS",
            &mut config.idle_heartbeats,
        )?;
        parse_number(&env, "TICKWIRE_MAX_ATTEMPTS", &mut config.max_attempts)?;
        parse_number(
            &env,
            "TICKWIRE_RATE_LIMIT",
            &mut config.rate_limit_per_minute,
        )?;
        parse_number(&env, "TICKWIRE_BURST", &mut config.burst)?;
        parse_number(
            &env,
            "TICKWIRE_MAX_QUEUED_COMMANDS",
            &mut config.max_queued_commands,
        )?;
        parse_number(
            &env,
            "TICKWIRE_MAX_PACKET_SIZE",
            &mut config.max_packet_size,
        )?;
        parse_number(
            &env,
            "TICKWIRE_MAX_SUBSCRIPTIONS",
            &mut config.max_subscriptions,
        )?;
        parse_number(
            &env,
            "TICKWIRE_MAX_HISTORY_BARS",
            &mut config.max_history_bars,
        )?;
        if let Some((name, value)) = env("TICKWIRE_SEED") {
            let seed = value
                .trim()
                .parse()
                .map_err(|error: std::num::ParseIntError| {
                    env_error(&name, &value, &error.to_string())
                })?;
            config.seed = Some(seed);
        }
        parse_number(&env, "TICKWIRE_JITTER", &mut config.jitter)?;
        config.validate()?;
        Ok(config)
    }
}

fn env_error(name: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Env {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_number<T: std::str::FromStr>(
    env: &impl Fn(&str) -> Option<(String, String)>,
    name: &str,
    slot: &mut T,
) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Some((name, value)) = env(name) {
        *slot = value
            .trim()
            .parse()
            .map_err(|error: T::Err| env_error(&name, &value, &error.to_string()))?;
    }
    Ok(())
}

/// Parses a humantime duration (`250ms`, `15s`, `2m`, `1h 30m`) or a plain number of seconds.
///
/// ```
/// use std::time::Duration;
/// use tickwire_core::client::parse_duration;
///
/// assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
/// assert!(parse_duration("soon").is_err());
/// ```
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (expected a duration such as 15s or 250ms)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let config = Config::default();
        assert_eq!(config.idle_heartbeats, 5);
        assert_eq!(config.read_timeout, Duration::from_secs(15));
        assert_eq!(config.data_silence, Duration::from_secs(30));
        assert_eq!(config.health_interval, Duration::from_secs(10));
        assert_eq!(config.grace, Duration::from_secs(2));
        assert_eq!(
            (config.backoff_initial, config.backoff_max),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.breaker_recovery, Duration::from_secs(60));
        assert_eq!((config.rate_limit_per_minute, config.burst), (60, 10));
        assert_eq!(config.auth_token, "unauthorized_user_token");
        assert!(config.polling.is_none());
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn environment_overrides_every_setting() {
        let config = Config::from_lookup(lookup(&[
            ("TICKWIRE_URL", "ws://127.0.0.1:9/x"),
            ("TICKWIRE_AUTH_TOKEN", "jwt"),
            ("TICKWIRE_LOCALE", "en_US"),
            ("TICKWIRE_QUOTE_FIELDS", "lp, ch"),
            ("TICKWIRE_CONNECT_TIMEOUT", "3s"),
            ("TICKWIRE_READ_TIMEOUT", "1m"),
            ("TICKWIRE_IDLE_HEARTBEATS", "7"),
            ("TICKWIRE_JITTER", "0.1"),
            ("TICKWIRE_RATE_LIMIT", "120"),
            ("TICKWIRE_BURST", "20"),
            ("TICKWIRE_MAX_AGE", "1h"),
            ("TICKWIRE_POLL_INTERVAL", "2s"),
            ("TICKWIRE_POLL_AFTER", "10s"),
            ("TICKWIRE_SEED", "42"),
        ]))
        .unwrap();
        assert_eq!(config.url, "ws://127.0.0.1:9/x");
        assert_eq!(config.auth_token, "jwt");
        assert_eq!(config.locale, Some(("en".to_owned(), "US".to_owned())));
        assert_eq!(config.quote_fields, ["lp", "ch"]);
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.read_timeout, Duration::from_secs(60));
        assert_eq!(config.idle_heartbeats, 7);
        assert_eq!(config.jitter, 0.1);
        assert_eq!((config.rate_limit_per_minute, config.burst), (120, 20));
        assert_eq!(config.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(
            config.polling,
            Some(PollingConfig {
                interval: Duration::from_secs(2),
                unavailable_after: Duration::from_secs(10),
                timeout: Duration::from_secs(45),
            })
        );
        assert_eq!(config.seed, Some(42));
    }

    #[test]
    fn bad_environment_values_are_clear_errors() {
        let error = Config::from_lookup(lookup(&[("TICKWIRE_READ_TIMEOUT", "soon")])).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("TICKWIRE_READ_TIMEOUT=\"soon\""),
            "{error}"
        );
        let error = Config::from_lookup(lookup(&[("TICKWIRE_BURST", "-1")])).unwrap_err();
        assert!(error.to_string().contains("TICKWIRE_BURST"), "{error}");
        let error =
            Config::from_lookup(lookup(&[("TICKWIRE_BACKOFF_MAX", "100000h")])).unwrap_err();
        assert_eq!(
            error,
            ConfigError::Invalid("durations must not exceed 30 days".to_owned())
        );
        let error = Config::from_lookup(lookup(&[("TICKWIRE_JITTER", "3")])).unwrap_err();
        assert_eq!(
            error,
            ConfigError::Invalid("jitter must be between 0 and 1".to_owned())
        );
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let config = Config {
            auth_token: "eyJsecret.payload.signature".to_owned(),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("secret") && shown.contains("<redacted, 27 chars>"),
            "{shown}"
        );
        assert!(shown.contains("read_timeout"));
    }

    #[test]
    fn durations_parse_in_several_forms() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m 5s"), Ok(Duration::from_secs(125)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }
}
