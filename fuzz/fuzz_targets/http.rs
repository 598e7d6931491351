//! Any bytes as an HTTP answer (a body, a header, a pasted cookie, a token): every parser of
//! the HTTP side takes it without panicking, hanging or growing without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickwire_http::fuzzing::every_parser(data);
});
