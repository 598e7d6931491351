//! A synthetic market: seeded random walks for many symbols, deterministic history, and the
//! bar book every chart series and history request reads.

use std::collections::{HashMap, VecDeque};

use crate::session::MAX_BARS;

/// The most bar series the book keeps over all symbols and timeframes. A series exists for each
/// (symbol, timeframe) some session asked for, so the book is bounded by symbols × timeframes
/// requested; the timeframe forms (`2D`, `3D`, ...) are many, so this bounds it for a client
/// that walks through them. A chart series beyond it gets `series_error` "too_many_series".
pub const MAX_BAR_SERIES: usize = 4_096;

/// Well-known names first, so demos and third-party clients find familiar symbols; then
/// `EMU:S<n>` up to the requested count.
const KNOWN: &[(&str, &str, f64, Kind)] = &[
    (
        "BINANCE:BTCUSDT",
        "Bitcoin / TetherUS",
        64_000.0,
        Kind::Crypto,
    ),
    (
        "BINANCE:ETHUSDT",
        "Ethereum / TetherUS",
        3_200.0,
        Kind::Crypto,
    ),
    ("NASDAQ:AAPL", "Apple Inc.", 190.0, Kind::Stock),
    ("NASDAQ:MSFT", "Microsoft Corporation", 410.0, Kind::Stock),
    (
        "NYSE:IBM",
        "International Business Machines",
        170.0,
        Kind::Stock,
    ),
    ("FX:EURUSD", "Euro / U.S. Dollar", 1.08, Kind::Forex),
    (
        "FX:GBPUSD",
        "British Pound / U.S. Dollar",
        1.27,
        Kind::Forex,
    ),
    ("SP:SPX", "S&P 500", 5_100.0, Kind::Index),
    ("NASDAQ:NDX", "NASDAQ 100", 18_000.0, Kind::Index),
    ("TVC:GOLD", "Gold", 2_300.0, Kind::Index),
];

/// What kind of instrument a symbol is; decides volume reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Trades with volume.
    Stock,
    /// Trades with volume, around the clock.
    Crypto,
    /// No volume field; 5-value bars.
    Forex,
    /// Reports `volume: 1e100` (no volume); 5-value bars.
    Index,
}

/// One symbol's state.
#[derive(Debug, Clone)]
pub struct Instrument {
    /// `EXCHANGE:TICKER`.
    pub name: String,
    /// Human-readable description.
    pub description: String,
    /// Instrument kind.
    pub kind: Kind,
    /// Last price.
    pub price: f64,
    /// Previous close, for `ch` / `chp`.
    pub prev_close: f64,
    /// Cumulative volume today.
    pub volume: f64,
    /// Per-symbol seed for history.
    seed: u64,
}

impl Instrument {
    /// Change since the previous close.
    pub fn change(&self) -> f64 {
        round(self.price - self.prev_close, 4)
    }

    /// Change in percent.
    pub fn change_percent(&self) -> f64 {
        if self.prev_close == 0.0 {
            0.0
        } else {
            round((self.price / self.prev_close - 1.0) * 100.0, 2)
        }
    }

    /// Spread around the last price.
    pub fn bid_ask(&self) -> (f64, f64) {
        let half_spread = (self.price * 0.0001).max(0.00001);
        (
            round(self.price - half_spread, 5),
            round(self.price + half_spread, 5),
        )
    }

    /// Whether it trades around the clock (crypto), so market hours never close it.
    pub fn always_open(&self) -> bool {
        self.kind == Kind::Crypto
    }

    /// Whether bars and quotes carry a volume.
    pub fn has_volume(&self) -> bool {
        matches!(self.kind, Kind::Stock | Kind::Crypto)
    }

    /// Deterministic bars `[time, open, high, low, close, volume]` ending with the bar that
    /// contains `now` (Unix seconds), oldest first; the last closes at the current price.
    pub fn history(&self, timeframe_secs: u64, count: usize, now: f64) -> Vec<[f64; 6]> {
        let step = timeframe_secs.max(1) as f64;
        let current = (now / step).floor() * step;
        let mut bars = self.synthetic_bars_before(current + step, self.price, step, count);
        bars.reverse();
        bars
    }

    /// `count` synthetic bars of `step` seconds, newest first, the newest opening one step
    /// before `time` and closing at `close`; each older bar closes where the next one opened,
    /// so a history extended backwards later is the history generated in one go. A bar's
    /// values depend on the seed, its time and the close it ends at.
    fn synthetic_bars_before(
        &self,
        time: f64,
        close: f64,
        step: f64,
        count: usize,
    ) -> Vec<[f64; 6]> {
        let mut bars = Vec::with_capacity(count);
        let mut close = round(close, 5);
        for back in 1..=count {
            let time = time - back as f64 * step;
            let mut rng = fastrand::Rng::with_seed(
                self.seed ^ (time as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let drift = (rng.f64() - 0.5) * 0.004 * close;
            let open = round((close - drift).max(0.0001), 5);
            let high = round(open.max(close) * (1.0 + rng.f64() * 0.001), 5);
            let low = round(open.min(close) * (1.0 - rng.f64() * 0.001), 5);
            let volume = if self.has_volume() {
                (rng.f64() * 1_000.0).round()
            } else {
                f64::NAN
            };
            bars.push([time, open, high, low, close, volume]);
            close = open;
        }
        bars
    }
}

/// The bars of one (symbol, timeframe) series in the market's book, oldest first.
#[derive(Debug, Clone)]
struct BarSeries {
    timeframe_secs: u64,
    /// At most [`MAX_BARS`]; the oldest go first.
    bars: VecDeque<[f64; 6]>,
}

impl BarSeries {
    /// A series whose history is `count` synthetic bars ending with the one containing `now`
    /// (market time), closing at the instrument's price then, so the first tick joins it.
    fn new(instrument: &Instrument, timeframe_secs: u64, count: usize, now: f64) -> BarSeries {
        let bars = instrument.history(timeframe_secs, count.clamp(1, MAX_BARS), now);
        BarSeries {
            timeframe_secs,
            bars: bars.into(),
        }
    }

    /// Extends the synthetic history backwards to `count` bars (at most [`MAX_BARS`]).
    fn deepen(&mut self, instrument: &Instrument, count: usize) {
        let missing = count.min(MAX_BARS).saturating_sub(self.bars.len());
        // Below the cap nothing was ever dropped, so the oldest bar is still synthetic and
        // the walk goes on from where it opened.
        let Some(oldest) = self.bars.front().copied() else {
            return;
        };
        if missing == 0 {
            return;
        }
        let step = self.timeframe_secs.max(1) as f64;
        for bar in instrument.synthetic_bars_before(oldest[0], oldest[1], step, missing) {
            self.bars.push_front(bar);
        }
    }

    /// A trade at `price` of `size` at market time `time`: the forming bar moves, or a new
    /// bar opens (and the oldest goes when the series is full).
    fn on_trade(&mut self, price: f64, size: f64, time: f64, with_volume: bool) {
        let step = self.timeframe_secs.max(1) as f64;
        let bar_time = (time / step).floor() * step;
        match self.bars.back_mut() {
            // A wall clock that stepped back still lands in the forming bar: bar times only grow.
            Some(bar) if bar_time <= bar[0] => {
                bar[2] = bar[2].max(price);
                bar[3] = bar[3].min(price);
                bar[4] = price;
                bar[5] += size;
            }
            _ => {
                if self.bars.len() >= MAX_BARS {
                    self.bars.pop_front();
                }
                let volume = if with_volume { size } else { f64::NAN };
                self.bars
                    .push_back([bar_time, price, price, price, price, volume]);
            }
        }
    }
}

/// One bar of the market's bar book, as [`crate::Emulator::bar_history`] reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmulatorBar {
    /// Open time, Unix seconds of market time.
    pub time: f64,
    /// Open.
    pub open: f64,
    /// High.
    pub high: f64,
    /// Low.
    pub low: f64,
    /// Close (the last price, for the forming bar).
    pub close: f64,
    /// Volume; `None` for instruments without one (their bars have 5 values on the wire).
    pub volume: Option<f64>,
}

impl EmulatorBar {
    /// The bar of a `[time, open, high, low, close, volume]` row; a NaN volume is none.
    pub fn from_row(row: &[f64; 6]) -> EmulatorBar {
        let [time, open, high, low, close, volume] = *row;
        EmulatorBar {
            time,
            open,
            high,
            low,
            close,
            volume: (!volume.is_nan()).then_some(volume),
        }
    }
}

/// A price change of one symbol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// Index into [`Market::instruments`].
    pub symbol: usize,
    /// New last price.
    pub price: f64,
    /// Traded size of this tick (0 for instruments without volume).
    pub size: f64,
    /// Unix seconds.
    pub time: f64,
}

/// All symbols and their random walks.
///
/// The market is open or closed as a whole; a closed market still trades its around-the-clock
/// symbols ([`Instrument::always_open`]) and nothing else.
#[derive(Debug, Clone)]
pub struct Market {
    instruments: Vec<Instrument>,
    by_name: HashMap<String, usize>,
    /// Indices of the symbols that trade while the market is closed.
    always_open: Vec<usize>,
    open: bool,
    rng: fastrand::Rng,
    /// The market clock: real Unix time `epoch` is market time `epoch`, and market time runs
    /// `speed` times as fast from there.
    epoch: f64,
    speed: f64,
    /// The bar book: per symbol index, the series some session asked for, each built from
    /// this market's ticks from then on. Every session and history request reads it, so a
    /// reconnecting client's backfill is the bars it was streamed.
    bar_series: Vec<Vec<BarSeries>>,
    /// Series in `bar_series`, at most [`MAX_BAR_SERIES`].
    bar_series_count: usize,
}

impl Market {
    /// `count` symbols (at least the well-known ones' worth, if `count` allows), seeded.
    pub fn new(count: usize, seed: u64) -> Market {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut instruments = Vec::with_capacity(count);
        for index in 0..count {
            let (name, description, price, kind) = match KNOWN.get(index) {
                Some((name, description, price, kind)) => {
                    ((*name).to_owned(), (*description).to_owned(), *price, *kind)
                }
                None => (
                    format!("EMU:S{index}"),
                    format!("Synthetic {index}"),
                    10.0 + rng.f64() * 490.0,
                    Kind::Stock,
                ),
            };
            instruments.push(Instrument {
                name,
                description,
                kind,
                price: round(price, 5),
                prev_close: round(price * (1.0 + (rng.f64() - 0.5) * 0.02), 5),
                volume: if kind == Kind::Index || kind == Kind::Forex {
                    0.0
                } else {
                    rng.f64().mul_add(1e6, 1e5).round()
                },
                seed: rng.u64(..),
            });
        }
        let by_name = instruments
            .iter()
            .enumerate()
            .map(|(index, instrument)| (instrument.name.clone(), index))
            .collect();
        let always_open = instruments
            .iter()
            .enumerate()
            .filter(|(_, instrument)| instrument.always_open())
            .map(|(index, _)| index)
            .collect();
        Market {
            instruments,
            by_name,
            always_open,
            open: true,
            rng,
            epoch: 0.0,
            speed: 1.0,
            bar_series: vec![Vec::new(); count],
            bar_series_count: 0,
        }
    }

    /// Makes sure the book keeps `timeframe_secs` bars of symbol `index` and holds at least
    /// `count` of them (at most [`MAX_BARS`]). A new series starts with synthetic history
    /// ending with the bar that contains market time `now`, closing at the price then; ticks
    /// extend it from there. `false` when the symbol is unknown or the book already holds
    /// [`MAX_BAR_SERIES`] series.
    ///
    /// ```
    /// use tickwire_emulator::market::Market;
    ///
    /// let mut market = Market::new(1, 1);
    /// assert!(market.track_bars(0, 60, 10, 1_700_000_030.0));
    /// let tick = market.tick(1_700_000_031.0).unwrap();
    /// let bars = market.bars(0, 60).unwrap();
    /// assert_eq!(bars.len(), 10);
    /// assert_eq!(bars.back().map(|bar| bar[4]), Some(tick.price));
    /// ```
    pub fn track_bars(
        &mut self,
        index: usize,
        timeframe_secs: u64,
        count: usize,
        now: f64,
    ) -> bool {
        let (Some(instrument), Some(series)) =
            (self.instruments.get(index), self.bar_series.get_mut(index))
        else {
            return false;
        };
        if let Some(known) = series
            .iter_mut()
            .find(|known| known.timeframe_secs == timeframe_secs)
        {
            known.deepen(instrument, count);
            return true;
        }
        if self.bar_series_count >= MAX_BAR_SERIES {
            return false;
        }
        series.push(BarSeries::new(instrument, timeframe_secs, count, now));
        self.bar_series_count += 1;
        true
    }

    /// The book's bars of symbol `index` at `timeframe_secs`, oldest first, the last one
    /// forming; `None` unless [`Market::track_bars`] started the series.
    pub fn bars(&self, index: usize, timeframe_secs: u64) -> Option<&VecDeque<[f64; 6]>> {
        self.bar_series
            .get(index)?
            .iter()
            .find(|series| series.timeframe_secs == timeframe_secs)
            .map(|series| &series.bars)
    }

    /// Runs the market clock `speed` times as fast as real time from the real Unix time
    /// `epoch` on (see [`Market::time_at`]). A speed that is not a positive finite number
    /// is taken as 1.
    pub fn set_speed(&mut self, epoch: f64, speed: f64) {
        self.epoch = epoch;
        self.speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
    }

    /// The market's time (Unix seconds) at real Unix time `real`: `real` itself at speed 1.
    ///
    /// ```
    /// use tickwire_emulator::market::Market;
    ///
    /// let mut market = Market::new(1, 1);
    /// assert_eq!(market.time_at(1_700_000_000.0), 1_700_000_000.0);
    /// market.set_speed(1_700_000_000.0, 60.0);
    /// assert_eq!(market.time_at(1_700_000_002.0), 1_700_000_120.0);
    /// ```
    pub fn time_at(&self, real: f64) -> f64 {
        if self.speed == 1.0 {
            return real;
        }
        self.epoch + (real - self.epoch) * self.speed
    }

    /// Whether the market is open (in session).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Opens or closes the market; returns whether that changed anything.
    pub fn set_open(&mut self, open: bool) -> bool {
        let changed = self.open != open;
        self.open = open;
        changed
    }

    /// Whether symbol `index` trades now: the market is open, or the symbol never closes.
    pub fn is_trading(&self, index: usize) -> bool {
        self.open
            || self
                .instruments
                .get(index)
                .is_some_and(Instrument::always_open)
    }

    /// The `current_session` quote value of symbol `index` now: `market` or `out_of_session`.
    pub fn current_session(&self, index: usize) -> &'static str {
        if self.is_trading(index) {
            "market"
        } else {
            "out_of_session"
        }
    }

    /// Every symbol.
    pub fn instruments(&self) -> &[Instrument] {
        &self.instruments
    }

    /// One symbol.
    pub fn instrument(&self, index: usize) -> Option<&Instrument> {
        self.instruments.get(index)
    }

    /// The index of a symbol name.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Moves one random trading symbol's price and returns the tick; `None` when nothing trades
    /// (no symbols, or a closed market without around-the-clock symbols).
    pub fn tick(&mut self, now: f64) -> Option<Tick> {
        let symbol = if self.open {
            if self.instruments.is_empty() {
                return None;
            }
            self.rng.usize(..self.instruments.len())
        } else {
            if self.always_open.is_empty() {
                return None;
            }
            *self
                .always_open
                .get(self.rng.usize(..self.always_open.len()))?
        };
        let step = (self.rng.f64() - 0.5) * 0.002;
        let size = (self.rng.f64() * 100.0).round() + 1.0;
        let instrument = self.instruments.get_mut(symbol)?;
        instrument.price = round((instrument.price * (1.0 + step)).max(0.0001), 5);
        let size = if instrument.has_volume() { size } else { 0.0 };
        instrument.volume += size;
        // The book moves with the market, whether or not a session holds the series now.
        if let Some(series) = self.bar_series.get_mut(symbol) {
            let with_volume = instrument.has_volume();
            for bars in series {
                bars.on_trade(instrument.price, size, now, with_volume);
            }
        }
        Some(Tick {
            symbol,
            price: instrument.price,
            size,
            time: now,
        })
    }
}

/// Seconds per bar for a timeframe string, `None` when the real server would answer it with
/// `critical_error` "invalid parameters".
///
/// The forms it knows: digits only = minutes (`1` to `1440`); `NS` = seconds (known, but not
/// entitled for anonymous users: the caller answers `series_error`); `D` / `ND` days; `W` / `NW`
/// weeks; `M` / `NM` months (30 days each, for history spacing). Lower-case units (`15m`, `1h`,
/// `1d`), hours (`4H`) and anything else are not timeframes.
pub fn timeframe_seconds(timeframe: &str) -> Option<u64> {
    let split = timeframe
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(timeframe.len());
    let (digits, unit) = timeframe.split_at(split);
    let count: Option<u64> = if digits.is_empty() {
        None
    } else {
        Some(digits.parse().ok()?)
    };
    let per_unit = match unit {
        "" => {
            let minutes = count?;
            return (1..=1_440).contains(&minutes).then_some(minutes * 60);
        }
        // Seconds need a count: a bare `S` is not a timeframe.
        "S" => {
            count?;
            1
        }
        "D" => 86_400,
        "W" => 7 * 86_400,
        "M" => 30 * 86_400,
        _ => return None,
    };
    let count = count.unwrap_or(1);
    if count == 0 {
        return None;
    }
    count.checked_mul(per_unit)
}

/// `value` rounded to `decimals` places.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markets_are_seeded_and_have_well_known_names() {
        let mut first = Market::new(20, 7);
        let mut second = Market::new(20, 7);
        assert_eq!(first.lookup("NASDAQ:AAPL"), Some(2));
        assert_eq!(first.lookup("EMU:S19"), Some(19));
        assert_eq!(first.lookup("NOPE:X"), None);
        for _ in 0..100 {
            assert_eq!(first.tick(1.0), second.tick(1.0));
        }
    }

    #[test]
    fn a_closed_market_trades_only_crypto() {
        let mut market = Market::new(20, 3);
        assert!(market.is_open() && market.is_trading(2));
        assert!(market.set_open(false));
        assert!(!market.set_open(false), "no change the second time");
        assert_eq!(market.current_session(0), "market", "crypto never closes");
        assert_eq!(market.current_session(2), "out_of_session");
        assert_eq!(
            market.current_session(5),
            "out_of_session",
            "forex closes too"
        );
        for _ in 0..500 {
            let tick = market.tick(1.0).unwrap();
            assert_eq!(market.instrument(tick.symbol).unwrap().kind, Kind::Crypto);
        }
        let mut stocks_only = Market::new(20, 3);
        stocks_only
            .instruments
            .retain(|instrument| instrument.kind != Kind::Crypto);
        stocks_only.always_open.clear();
        stocks_only.set_open(false);
        assert_eq!(stocks_only.tick(1.0), None);
        market.set_open(true);
        assert!((0..500).any(|_| market.tick(1.0).unwrap().symbol >= 2));
    }

    #[test]
    fn history_ends_at_the_current_bar_and_is_deterministic() {
        let market = Market::new(10, 1);
        let btc = market.instrument(0).unwrap();
        let bars = btc.history(60, 5, 1_700_000_030.0);
        assert_eq!(bars.len(), 5);
        assert_eq!(bars[4][0], 1_700_000_000.0 - 20.0);
        assert_eq!(bars[4][4], btc.price);
        assert!(bars.windows(2).all(|pair| pair[1][0] - pair[0][0] == 60.0));
        assert!(
            bars.iter()
                .all(|bar| bar[2] >= bar[1].max(bar[4]) && bar[3] <= bar[1].min(bar[4]))
        );
        assert_eq!(bars, btc.history(60, 5, 1_700_000_030.0));
    }

    const START: f64 = 1_700_000_030.0;

    /// Ticks the market at `times` until `symbol` has ticked at each; returns those ticks.
    fn ticks_of(market: &mut Market, symbol: usize, times: &[f64]) -> Vec<Tick> {
        times
            .iter()
            .map(|&time| {
                loop {
                    if let Some(tick) = market.tick(time).filter(|tick| tick.symbol == symbol) {
                        break tick;
                    }
                }
            })
            .collect()
    }

    #[test]
    fn ticks_extend_the_bar_book_from_its_synthetic_history() {
        let mut market = Market::new(6, 1);
        assert!(market.bars(0, 60).is_none(), "no book before a request");
        assert!(market.track_bars(0, 60, 10, START));
        let synthetic = market.instrument(0).unwrap().history(60, 10, START);
        assert!(market.bars(0, 60).unwrap().iter().eq(synthetic.iter()));
        let forming = synthetic[9];

        let same_bar = ticks_of(&mut market, 0, &[START + 1.0, START + 2.0]);
        let bars = market.bars(0, 60).unwrap();
        assert_eq!(bars.len(), 10, "the ticks joined the bar that was forming");
        let last = bars[9];
        let prices = same_bar.iter().map(|tick| tick.price);
        assert_eq!(last[..2], forming[..2], "same time and open");
        assert_eq!(last[2], prices.clone().fold(forming[2], f64::max));
        assert_eq!(last[3], prices.fold(forming[3], f64::min));
        assert_eq!(last[4], same_bar[1].price);
        assert_eq!(last[5], forming[5] + same_bar[0].size + same_bar[1].size);
        assert!(bars.range(..9).eq(synthetic[..9].iter()), "older bars stay");

        let next = ticks_of(&mut market, 0, &[START + 60.0, START + 61.0]);
        let bars = market.bars(0, 60).unwrap();
        assert_eq!(bars.len(), 11);
        let (high, low) = (
            next[0].price.max(next[1].price),
            next[0].price.min(next[1].price),
        );
        assert_eq!(
            bars[10],
            [
                forming[0] + 60.0,
                next[0].price,
                high,
                low,
                next[1].price,
                next[0].size + next[1].size
            ]
        );
        assert!(
            market.bars(0, 300).is_none(),
            "another timeframe is another series"
        );

        // Forex has no volume: NaN, as in its synthetic history.
        assert!(market.track_bars(5, 60, 3, START));
        ticks_of(&mut market, 5, &[START + 120.0]);
        let forex = market.bars(5, 60).unwrap();
        assert_eq!(forex.len(), 4);
        assert!(forex.iter().all(|bar| bar[5].is_nan()));
    }

    #[test]
    fn a_deeper_request_extends_the_book_backwards_as_one_history_would() {
        let mut market = Market::new(1, 1);
        let whole = market.instrument(0).unwrap().history(60, 300, START);
        assert!(market.track_bars(0, 60, 10, START));
        let tick = ticks_of(&mut market, 0, &[START + 5.0])[0];
        let shallow: Vec<[f64; 6]> = market.bars(0, 60).unwrap().iter().copied().collect();
        assert!(market.track_bars(0, 60, 300, START + 10.0));
        let deep = market.bars(0, 60).unwrap();
        assert_eq!(deep.len(), 300);
        assert!(
            deep.range(290..).eq(shallow.iter()),
            "the newest bars are untouched"
        );
        assert!(
            deep.range(..299).eq(whole[..299].iter()),
            "older bars: the one-go history"
        );
        assert_eq!(deep[299][4], tick.price);
        assert!(market.track_bars(0, 60, 5, START + 10.0));
        assert_eq!(
            market.bars(0, 60).unwrap().len(),
            300,
            "a shallower one leaves it"
        );
    }

    #[test]
    fn the_book_keeps_the_newest_max_bars_and_a_bounded_number_of_series() {
        let mut market = Market::new(1, 1);
        assert!(market.track_bars(0, 60, MAX_BARS + 10, START));
        assert_eq!(market.bars(0, 60).unwrap().len(), MAX_BARS);
        let times: Vec<f64> = (1..=25).map(|bar| START + bar as f64 * 60.0).collect();
        ticks_of(&mut market, 0, &times);
        let bars = market.bars(0, 60).unwrap();
        assert_eq!(bars.len(), MAX_BARS, "the oldest went");
        let newest = (times[24] / 60.0).floor() * 60.0;
        assert_eq!(bars.back().map(|bar| bar[0]), Some(newest));
        assert_eq!(
            bars.front().map(|bar| bar[0]),
            Some(newest - (MAX_BARS - 1) as f64 * 60.0)
        );
        assert!(
            bars.iter()
                .zip(bars.iter().skip(1))
                .all(|(a, b)| b[0] - a[0] == 60.0)
        );

        for timeframe_secs in 1..MAX_BAR_SERIES as u64 {
            assert!(market.track_bars(0, timeframe_secs * 86_400, 1, START));
        }
        assert!(!market.track_bars(0, 120, 1, START), "the book is full");
        assert!(market.bars(0, 120).is_none());
        assert!(
            market.track_bars(0, 60, 1, START),
            "a known series still serves"
        );
        assert!(!market.track_bars(1, 60, 1, START), "no such symbol");
    }

    #[test]
    fn bar_books_are_deterministic_for_a_seed() {
        let book = |seed: u64| {
            let mut market = Market::new(10, seed);
            for symbol in 0..10 {
                assert!(market.track_bars(symbol, 60, 50, START));
            }
            for step in 0..2_000 {
                market.tick(START + f64::from(step) * 0.5);
            }
            (0..10)
                .map(|symbol| format!("{:?}", market.bars(symbol, 60)))
                .collect::<Vec<_>>()
        };
        assert_eq!(book(7), book(7));
        assert_ne!(book(7), book(8));
    }

    #[test]
    fn timeframes() {
        assert_eq!(timeframe_seconds("1"), Some(60));
        assert_eq!(timeframe_seconds("15"), Some(900));
        assert_eq!(timeframe_seconds("1D"), Some(86_400));
        assert_eq!(timeframe_seconds("D"), Some(86_400));
        assert_eq!(timeframe_seconds("1440"), Some(86_400));
        assert_eq!(timeframe_seconds("2D"), Some(2 * 86_400));
        assert_eq!(timeframe_seconds("W"), Some(7 * 86_400));
        assert_eq!(timeframe_seconds("3M"), Some(90 * 86_400));
        assert_eq!(timeframe_seconds("M"), Some(30 * 86_400));
        assert_eq!(timeframe_seconds("5S"), Some(5));
        for invalid in [
            "15m", "1h", "1d", "4H", "1H", "0", "1441", "0D", "S", "", "1 ", "-1", "1.5", "D1",
            "60s", "1w",
        ] {
            assert_eq!(timeframe_seconds(invalid), None, "{invalid:?}");
        }
    }
}
