//! Any bytes as a packet payload: parsing never panics, and a parsed message's method and
//! session are readable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire_core::message;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = message::parse(data) {
        let _ = parsed.method().len();
        let _ = parsed.session().map(str::len);
    }
});
