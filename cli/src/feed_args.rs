//! The connection and resilience flags shared by `stream` and `history`.

use std::time::Duration;

use clap::{Args, ValueEnum};
use tickwire_core::client::{Config, DEFAULT_URL, parse_duration};
use tickwire_driver::{Feed, Options};
use tickwire_http::Secret;

use crate::Failure;
use crate::access::{Access, AccessArgs, FallbackArgs};

/// Which driver runs the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RuntimeChoice {
    /// tokio and tokio-tungstenite.
    Tokio,
    /// async-std (async-io and async-tungstenite).
    AsyncStd,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// Where to connect and how to stay connected. Every flag also reads an environment variable;
/// durations accept `250ms`, `15s`, `2m` or plain seconds.
#[derive(Debug, Clone, Args)]
pub(crate) struct FeedArgs {
    /// WebSocket URL of the feed.
    #[arg(long, env = "TICKWIRE_URL", default_value = DEFAULT_URL)]
    pub(crate) url: String,
    /// Which async runtime drives the connection.
    #[arg(long, value_enum, env = "TICKWIRE_RUNTIME", default_value = "tokio")]
    pub(crate) runtime: RuntimeChoice,
    #[command(flatten)]
    pub(crate) tuning: TuningArgs,
}

/// How to stay connected: timeouts, backoff, breaker and rate limit. Every flag also reads an
/// environment variable.
#[derive(Debug, Clone, Args)]
pub(crate) struct TuningArgs {
    /// A fixed auth token (a JWT) from `TICKWIRE_AUTH_TOKEN` only: a secret on the command line
    /// would show in every process listing. A stored session (`tickwire login`) is better: its
    /// token is refreshed.
    #[arg(skip = std::env::var("TICKWIRE_AUTH_TOKEN").ok().filter(|token| !token.is_empty()).map(Secret::new))]
    auth_token: Option<Secret>,
    /// Time allowed to open a connection.
    #[arg(long, env = "TICKWIRE_CONNECT_TIMEOUT", value_parser = duration)]
    connect_timeout: Option<Duration>,
    /// A connection silent this long is dead.
    #[arg(long, env = "TICKWIRE_READ_TIMEOUT", value_parser = duration)]
    read_timeout: Option<Duration>,
    /// Heartbeats in a row without data that mark a zombie connection.
    #[arg(long, env = "TICKWIRE_IDLE_HEARTBEATS")]
    idle_heartbeats: Option<u32>,
    /// No tick for this long while subscribed means reconnect.
    #[arg(long, env = "TICKWIRE_DATA_SILENCE", value_parser = duration)]
    data_silence: Option<Duration>,
    /// How often data silence is checked.
    #[arg(long, env = "TICKWIRE_HEALTH_INTERVAL", value_parser = duration)]
    health_interval: Option<Duration>,
    /// How long a quiet but acknowledged session must stay silent before the second verdict
    /// in a row; each further one waits 8 times longer.
    #[arg(long, env = "TICKWIRE_QUIET_RECHECK", value_parser = duration)]
    quiet_recheck: Option<Duration>,
    /// The longest wait between verdicts on a quiet session.
    #[arg(long, env = "TICKWIRE_QUIET_RECHECK_MAX", value_parser = duration)]
    quiet_recheck_max: Option<Duration>,
    /// A connection acknowledged for this long resets the failure count; one that ends sooner
    /// counts as a failure.
    #[arg(long, env = "TICKWIRE_STABLE_AFTER", value_parser = duration)]
    stable_after: Option<Duration>,
    /// Delay before retrying after a working connection drops.
    #[arg(long, env = "TICKWIRE_GRACE", value_parser = duration)]
    grace: Option<Duration>,
    /// First backoff delay after a failed attempt.
    #[arg(long, env = "TICKWIRE_BACKOFF_INITIAL", value_parser = duration)]
    backoff_initial: Option<Duration>,
    /// Backoff cap.
    #[arg(long, env = "TICKWIRE_BACKOFF_MAX", value_parser = duration)]
    backoff_max: Option<Duration>,
    /// Relative jitter on every delay, 0 to 1.
    #[arg(long, env = "TICKWIRE_JITTER")]
    jitter: Option<f64>,
    /// Failures in a row that open the circuit breaker.
    #[arg(long, env = "TICKWIRE_MAX_ATTEMPTS")]
    max_attempts: Option<u32>,
    /// How long the open circuit waits before probing (doubling after each failed probe).
    #[arg(long, env = "TICKWIRE_BREAKER_RECOVERY", value_parser = duration)]
    breaker_recovery: Option<Duration>,
    /// The longest wait of the open circuit.
    #[arg(long, env = "TICKWIRE_BREAKER_RECOVERY_MAX", value_parser = duration)]
    breaker_recovery_max: Option<Duration>,
    /// Seed of the jitter and session ids, for a run that repeats exactly; by default each
    /// process draws one from the operating system.
    #[arg(long, env = "TICKWIRE_SEED")]
    seed: Option<u64>,
    /// Commands per minute sent to the server.
    #[arg(long, env = "TICKWIRE_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Commands that may go at once.
    #[arg(long, env = "TICKWIRE_BURST")]
    burst: Option<u32>,
    #[command(flatten)]
    pub(crate) access: AccessArgs,
}

impl FeedArgs {
    /// [`TuningArgs::prepare`] for this feed's URL.
    pub(crate) async fn prepare(
        &self,
        fallback: Option<&FallbackArgs>,
    ) -> Result<(Config, Access), Failure> {
        self.tuning
            .prepare(&self.url, "--url", fallback, true)
            .await
    }

    /// Starts a feed on the chosen runtime (within the CLI's tokio runtime either way).
    pub(crate) fn connect(&self, config: Config, options: Options) -> Feed {
        match self.runtime {
            RuntimeChoice::Tokio => tickwire_tokio::connect_with(config, options),
            RuntimeChoice::AsyncStd => tickwire_async_std::connect_with(config, options),
        }
    }
}

impl TuningArgs {
    /// [`TuningArgs::config`], then the polling fallback, then who the feed signs in as (the
    /// session's first token fetched here). The [`Access`] builds the driver options.
    pub(crate) async fn prepare(
        &self,
        url: &str,
        flag: &str,
        fallback: Option<&FallbackArgs>,
        default_session: bool,
    ) -> Result<(Config, Access), Failure> {
        let mut config = self.config(url, flag)?;
        match fallback {
            Some(fallback) => fallback.apply(&mut config)?,
            None => config.polling = None,
        }
        let access = self
            .access
            .resolve(&mut config, self.auth_token.is_some(), default_session)
            .await?;
        config
            .validate()
            .map_err(|error| Failure::Message(error.to_string()))?;
        Ok((config, access))
    }

    /// Defaults, then the `TICKWIRE_*` variables, then these flags, for the feed at `url`
    /// (named `flag` in errors).
    pub(crate) fn config(&self, url: &str, flag: &str) -> Result<Config, Failure> {
        let mut config = Config::from_env().map_err(|error| Failure::Message(error.to_string()))?;
        config.url = url.to_owned();
        if let Some(token) = &self.auth_token {
            config.auth_token = token.expose().to_owned();
        }
        let durations = [
            (&mut config.connect_timeout, self.connect_timeout),
            (&mut config.read_timeout, self.read_timeout),
            (&mut config.data_silence, self.data_silence),
            (&mut config.health_interval, self.health_interval),
            (&mut config.quiet_recheck, self.quiet_recheck),
            (&mut config.quiet_recheck_max, self.quiet_recheck_max),
            (&mut config.stable_after, self.stable_after),
            (&mut config.breaker_recovery_max, self.breaker_recovery_max),
            (&mut config.grace, self.grace),
            (&mut config.backoff_initial, self.backoff_initial),
            (&mut config.backoff_max, self.backoff_max),
            (&mut config.breaker_recovery, self.breaker_recovery),
        ];
        for (slot, value) in durations {
            if let Some(value) = value {
                *slot = value;
            }
        }
        if let Some(seed) = self.seed {
            config.seed = Some(seed);
        }
        if let Some(value) = self.idle_heartbeats {
            config.idle_heartbeats = value;
        }
        if let Some(value) = self.jitter {
            config.jitter = value;
        }
        if let Some(value) = self.max_attempts {
            config.max_attempts = value;
        }
        if let Some(value) = self.rate_limit {
            config.rate_limit_per_minute = value;
        }
        if let Some(value) = self.burst {
            config.burst = value;
        }
        if !(config.url.starts_with("ws://") || config.url.starts_with("wss://")) {
            return Err(Failure::Message(format!(
                "{flag} {:?}: expected a ws:// or wss:// URL",
                config.url
            )));
        }
        config
            .validate()
            .map_err(|error| Failure::Message(error.to_string()))?;
        Ok(config)
    }
}
