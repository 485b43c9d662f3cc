//! Fuzz target: any bytes through the Dockerfile parser and the dump; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(dockerfile) = kiln_frontend::parser::parse_bytes("Dockerfile", data) {
        let _ = kiln_frontend::parser::dump(&dockerfile);
    }
});
