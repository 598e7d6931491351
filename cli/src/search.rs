//! `tickwire search`: find the socket symbol id of an instrument.

use std::io::Write;

use clap::Args;
use tickwire_http::search::{self, MAX_LIMIT, SearchQuery, SymbolMatch};

use crate::Failure;
use crate::access::HttpArgs;

/// Search TradingView's symbols; prints the id to stream (`NASDAQ:AAPL`, `FX:EURUSD`) with its
/// type, exchange and description.
#[derive(Debug, Args)]
pub(crate) struct SearchArgs {
    /// What to look for: a ticker or a name; `EXCH:TEXT` searches one exchange.
    text: String,
    /// Only this exchange.
    #[arg(long)]
    exchange: Option<String>,
    /// Only this type: stock, crypto, forex, futures, index, bond, fund, etf, economic (or any
    /// TradingView search_type).
    #[arg(long = "type")]
    kind: Option<String>,
    /// Most results (pages of 50 are fetched one after another).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=MAX_LIMIT as i64))]
    limit: u16,
    /// One JSON object per match instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    http: HttpArgs,
}

pub(crate) async fn run(args: SearchArgs) -> Result<(), Failure> {
    if args.text.trim().is_empty() {
        return Err(Failure::Message("nothing to search for".to_owned()));
    }
    let mut query = SearchQuery::new(args.text.clone()).with_limit(usize::from(args.limit));
    if let Some(exchange) = &args.exchange {
        query = query.with_exchange(exchange.clone());
    }
    if let Some(kind) = &args.kind {
        query = query.with_kind(kind.clone());
    }
    let client = args.http.client();
    let found = tokio::task::spawn_blocking(move || search::search(&client, &query))
        .await
        .map_err(|_| Failure::Message("the search thread failed".to_owned()))?
        .map_err(|error| Failure::Message(format!("symbol search failed: {error}")))?;
    print(&found, args.json).map_err(|_| Failure::OutputClosed)
}

fn print(found: &[SymbolMatch], json: bool) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        for item in found {
            let line = serde_json::to_string(item).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        return out.flush();
    }
    if found.is_empty() {
        writeln!(out, "no match")?;
        return out.flush();
    }
    let width = found
        .iter()
        .map(|item| item.id.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 40);
    for item in found {
        writeln!(
            out,
            "{:<width$}  {:<8}  {:<12}  {}",
            item.id,
            item.kind.as_deref().unwrap_or("-"),
            item.exchange.as_deref().unwrap_or("-"),
            item.description.as_deref().unwrap_or("")
        )?;
    }
    out.flush()
}
