use std::time::Duration;

use futures::StreamExt;
use tickwire_emulator::{Emulator, EmulatorConfig};
use tickwire_tokio::{Config, Event};

#[tokio::test]
async fn streams_quotes_from_the_emulator() {
    let emulator = Emulator::start(EmulatorConfig {
        rate_hz: 200.0,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let config = Config {
        url: emulator.url(),
        ..Config::default()
    };
    let feed = tickwire_tokio::connect(config);
    feed.subscribe(["BINANCE:BTCUSDT", "NASDAQ:AAPL", "FX:EURUSD"]);
    let mut events = feed.events();
    let mut quotes = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let Event::Quote(_) = event {
                quotes += 1;
                if quotes >= 20 {
                    break;
                }
            }
        }
    })
    .await
    .expect("quotes arrive");
    tokio::time::timeout(Duration::from_secs(5), feed.close())
        .await
        .expect("close returns");
    emulator.shutdown().await;
}
