//! The ClickHouse settings every service shares. The accounts are each service's own
//! (`CUSTOS_CLICKHOUSE_WRITER_USER`, `CUSTOS_QUERY_READER_USER`,
//! `CUSTOS_CONSENT_CLICKHOUSE_USER`, ...) and stay in its configuration; a client for one
//! is made here with [`ClickHouseUrl::client`] or [`ClickHouseArgs::client`].

use std::time::Duration;

use clap::Args;

/// Where ClickHouse answers (`CUSTOS_CLICKHOUSE_URL`).
#[derive(Debug, Clone, Args)]
pub struct ClickHouseUrl {
    /// ClickHouse HTTP endpoint.
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:18123"
    )]
    pub clickhouse_url: String,
}

impl ClickHouseUrl {
    /// A client of the endpoint as `user` (no database, no settings).
    pub fn client(&self, user: &str, password: &str) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.clickhouse_url)
            .with_user(user)
            .with_password(password)
    }
}

/// The endpoint and the request timeout (`CUSTOS_CLICKHOUSE_TIMEOUT_SECS`), for services
/// whose requests are bounded by it.
#[derive(Debug, Clone, Args)]
pub struct ClickHouseArgs {
    /// The endpoint.
    #[command(flatten)]
    pub endpoint: ClickHouseUrl,
    /// Timeout of one ClickHouse request, in seconds.
    #[arg(long, env = "CUSTOS_CLICKHOUSE_TIMEOUT_SECS", default_value_t = 30)]
    pub clickhouse_timeout_secs: u64,
}

impl ClickHouseArgs {
    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.endpoint.clickhouse_url
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.clickhouse_timeout_secs)
    }

    /// `Err` with the variable's name when the timeout is zero.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.clickhouse_timeout_secs == 0 {
            return Err("CUSTOS_CLICKHOUSE_TIMEOUT_SECS must be positive");
        }
        Ok(())
    }

    /// A client as `user` whose queries ClickHouse stops after the timeout
    /// (`max_execution_time`).
    pub fn client(&self, user: &str, password: &str) -> clickhouse::Client {
        self.endpoint.client(user, password).with_setting(
            "max_execution_time",
            self.clickhouse_timeout_secs.to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ch: ClickHouseArgs,
    }

    #[test]
    fn flags_defaults_and_environment_names() {
        let cli = Cli::try_parse_from(["t"]).expect("defaults");
        assert_eq!(cli.ch.url(), "http://127.0.0.1:18123");
        assert_eq!(cli.ch.timeout(), Duration::from_secs(30));
        let cli = Cli::try_parse_from([
            "t",
            "--clickhouse-url",
            "http://ch:8123",
            "--clickhouse-timeout-secs",
            "0",
        ])
        .expect("flags");
        assert_eq!(cli.ch.url(), "http://ch:8123");
        assert!(cli.ch.validate().is_err());
        use clap::CommandFactory;
        let cmd = Cli::command();
        let envs: Vec<_> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env().and_then(|e| e.to_str()).map(str::to_owned))
            .collect();
        assert_eq!(
            envs,
            ["CUSTOS_CLICKHOUSE_URL", "CUSTOS_CLICKHOUSE_TIMEOUT_SECS"]
        );
    }
}
