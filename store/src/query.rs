//! A relay's periodic query against a DuckDB file (see [`tickwire_core::query`]): each run
//! opens the file read-only, runs the SQL, turns the rows into [`QueryRow`]s and closes the
//! file again.
//!
//! Opening per run, rather than holding a connection, matters: DuckDB lets one process hold a
//! file for writing and refuses every other process meanwhile, readers included ("Conflicting
//! lock is held in … (PID n)"). A relay that held its connection would lock out the job that
//! loads the table; one that opens per run fails only the runs that meet the writer (the core
//! counts them and backs off), and sees each write once it is committed and the writer has
//! closed the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use duckdb::types::Value;
use duckdb::{AccessMode, Config, Connection};
use serde_json::{Map, Number, Value as Json};
use tickwire_core::query::QueryRow;

/// SQL run read-only against a DuckDB file; its rows keyed by their `symbol` column.
///
/// ```no_run
/// use tickwire_store::query::SqlQuery;
///
/// let query = SqlQuery::new(
///     "market.duckdb".as_ref(),
///     "SELECT symbol, arg_max(close, open_time) AS close FROM klines GROUP BY symbol",
/// )
/// .unwrap();
/// for row in query.run(10_000).unwrap() {
///     println!("{} {:?}", row.symbol, row.columns);
/// }
/// ```
#[derive(Clone)]
pub struct SqlQuery {
    path: PathBuf,
    sql: String,
    /// The SQL's string literals (where a key, a token or a signed URL would be), each
    /// replaced in the errors a run reports.
    literals: Vec<String>,
}

/// The file and the query's size only: the SQL may hold a credential.
impl std::fmt::Debug for SqlQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlQuery")
            .field("path", &self.path)
            .field("sql_bytes", &self.sql.len())
            .finish()
    }
}

impl SqlQuery {
    /// The query `sql` against the file at `path` (which need not exist yet: runs fail until
    /// it does).
    ///
    /// # Errors
    /// The SQL is empty.
    pub fn new(path: &Path, sql: &str) -> Result<SqlQuery, String> {
        let sql = sql.trim();
        if sql.is_empty() {
            return Err("the query is empty".to_owned());
        }
        Ok(SqlQuery {
            path: path.to_owned(),
            sql: sql.to_owned(),
            literals: string_literals(sql),
        })
    }

    /// The file queried.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the query once: at most `limit` rows are read (the rest are never fetched), each
    /// one's `symbol` column as its symbol (a `NULL` or non-text symbol gives an empty one,
    /// which the core counts as invalid) and every other column as JSON (see
    /// [`to_json`]).
    ///
    /// # Errors
    /// Why the run failed, as one line: the file cannot be opened (missing, locked by a
    /// writer, not a DuckDB file), the SQL fails, or the result has no `symbol` column. The
    /// line goes to logs and `/healthz`, so it never quotes the SQL: DuckDB's excerpt of the
    /// statement is cut, and each string literal of the SQL is replaced by `…` wherever
    /// the error repeats it (a file pattern, a secret's value).
    pub fn run(&self, limit: usize) -> Result<Vec<QueryRow>, String> {
        self.run_unredacted(limit)
            .map_err(|error| redact(&error, &self.literals))
    }

    fn run_unredacted(&self, limit: usize) -> Result<Vec<QueryRow>, String> {
        let connection = Config::default()
            .access_mode(AccessMode::ReadOnly)
            .and_then(|config| Connection::open_with_flags(&self.path, config))
            .map_err(|error| {
                format!(
                    "cannot open {}: {}",
                    self.path.display(),
                    one_line(&error.to_string())
                )
            })?;
        connection
            .execute_batch("SET TimeZone = 'UTC'")
            .map_err(|error| error.to_string())?;
        let mut statement = connection
            .prepare(&self.sql)
            .map_err(|error| one_line(&error.to_string()))?;
        let mut rows = statement
            .query([])
            .map_err(|error| one_line(&error.to_string()))?;
        let names: Vec<String> = rows
            .as_ref()
            .map(|statement| statement.column_names())
            .unwrap_or_default();
        let Some(symbol_at) = names.iter().position(|name| name == "symbol") else {
            return Err(format!(
                "the query returns no `symbol` column (it returns: {})",
                names.join(", ")
            ));
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next().map_err(|error| one_line(&error.to_string()))? else {
                break;
            };
            let mut symbol: Arc<str> = Arc::from("");
            let mut columns = std::collections::BTreeMap::new();
            for (at, name) in names.iter().enumerate() {
                let value: Value = row.get(at).map_err(|error| one_line(&error.to_string()))?;
                if at == symbol_at {
                    if let Value::Text(text) | Value::Enum(text) = value {
                        symbol = Arc::from(text);
                    }
                } else {
                    columns.insert(name.clone(), to_json(value));
                }
            }
            out.push(QueryRow { symbol, columns });
        }
        Ok(out)
    }
}

/// DuckDB's errors can span lines (a caret under the SQL); a log line and a counter want one.
/// Its excerpt of the statement (from `LINE n:` on) is dropped: it is the SQL itself.
fn one_line(text: &str) -> String {
    let text = text.find("\nLINE ").map_or(text, |at| &text[..at]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Literals shorter than this stay in errors: replacing `'x'` would garble every `x` in the
/// message, and no credential is that short.
const MIN_REDACTED_LITERAL: usize = 4;

/// The contents of the SQL's single-quoted string literals (`''` is a quote inside one), the
/// longest first so that a literal containing another is replaced whole.
fn string_literals(sql: &str) -> Vec<String> {
    let mut literals = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut literal = String::new();
        loop {
            match chars.next() {
                Some('\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    literal.push('\'');
                }
                Some('\'') | None => break,
                Some(other) => literal.push(other),
            }
        }
        if literal.chars().count() >= MIN_REDACTED_LITERAL {
            literals.push(literal);
        }
    }
    literals.sort_by_key(|literal| std::cmp::Reverse(literal.len()));
    literals.dedup();
    literals
}

fn redact(error: &str, literals: &[String]) -> String {
    let mut error = one_line(error);
    for literal in literals {
        // Compared as one line too: DuckDB may quote a literal holding line breaks.
        let literal = one_line(literal);
        if literal.chars().count() >= MIN_REDACTED_LITERAL && error.contains(&literal) {
            error = error.replace(&literal, "…");
        }
    }
    error
}

/// One DuckDB value as JSON, the way the relay's other messages carry such values: numbers as
/// numbers (a `DECIMAL` as the nearest double, a 128-bit integer as text when it does not fit
/// 64 bits, NaN and infinities as `null`), `TIMESTAMP`, `TIMESTAMPTZ` and `DATE` as Unix
/// seconds (a bar's `time` is too), `TIME` as seconds since midnight, `INTERVAL` as
/// `{"months","days","seconds"}`, text and enums as strings, blobs as lower-case hex, lists
/// and arrays as arrays, structs and maps as objects (a map's keys rendered as text), a
/// union as its value.
///
/// ```
/// use duckdb::types::{TimeUnit, Value};
/// use tickwire_store::query::to_json;
///
/// assert_eq!(to_json(Value::Timestamp(TimeUnit::Microsecond, 1_700_000_000_500_000)), 1_700_000_000.5);
/// assert_eq!(to_json(Value::Text("spot".into())), "spot");
/// ```
pub fn to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(flag) => Json::Bool(flag),
        Value::TinyInt(n) => n.into(),
        Value::SmallInt(n) => n.into(),
        Value::Int(n) => n.into(),
        Value::BigInt(n) => n.into(),
        Value::UTinyInt(n) => n.into(),
        Value::USmallInt(n) => n.into(),
        Value::UInt(n) => n.into(),
        Value::UBigInt(n) => n.into(),
        Value::HugeInt(n) => {
            i64::try_from(n).map_or_else(|_| Json::String(n.to_string()), Json::from)
        }
        Value::UHugeInt(n) => {
            u64::try_from(n).map_or_else(|_| Json::String(n.to_string()), Json::from)
        }
        Value::Float(n) => float(f64::from(n)),
        Value::Double(n) => float(n),
        Value::Decimal(decimal) => decimal.to_string().parse::<f64>().map_or(Json::Null, float),
        Value::Timestamp(unit, n) => seconds(unit.to_micros(n)),
        Value::Date32(days) => Json::from(i64::from(days).saturating_mul(86_400)),
        Value::Time64(unit, n) => seconds(unit.to_micros(n)),
        Value::Interval {
            months,
            days,
            nanos,
        } => {
            let mut object = Map::new();
            object.insert("months".to_owned(), months.into());
            object.insert("days".to_owned(), days.into());
            object.insert("seconds".to_owned(), float(nanos as f64 / 1e9));
            Json::Object(object)
        }
        Value::Text(text) | Value::Enum(text) => Json::String(text),
        Value::Blob(bytes) | Value::Geometry(bytes) => {
            Json::String(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
        }
        Value::List(values) | Value::Array(values) => {
            Json::Array(values.into_iter().map(to_json).collect())
        }
        Value::Struct(fields) => Json::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), to_json(value.clone())))
                .collect(),
        ),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(key, value)| (key_text(key.clone()), to_json(value.clone())))
                .collect(),
        ),
        Value::Union(value) => to_json(*value),
        // A type this DuckDB version adds: said as text rather than dropped silently.
        other => Json::String(format!("{other:?}")),
    }
}

fn float(n: f64) -> Json {
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

/// Unix microseconds as seconds: an integer when whole, else a fraction.
fn seconds(micros: i64) -> Json {
    if micros % 1_000_000 == 0 {
        Json::from(micros / 1_000_000)
    } else {
        float(micros as f64 / 1e6)
    }
}

fn key_text(key: Value) -> String {
    match to_json(key) {
        Json::String(text) => text,
        other => other.to_string(),
    }
}
