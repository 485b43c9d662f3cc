//! Fuzz target: any text through the shell-word lexer with every switch setting; nothing may
//! panic. The first byte picks the switches and the escape character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use kiln_frontend::shell::Lexer;

fuzz_target!(|data: &[u8]| {
    let Some((&switches, rest)) = data.split_first() else { return };
    let Ok(word) = std::str::from_utf8(rest) else { return };
    let lexer = Lexer {
        raw_quotes: switches & 1 != 0,
        raw_escapes: switches & 2 != 0,
        skip_process_quotes: switches & 4 != 0,
        skip_unset_env: switches & 8 != 0,
        ..Lexer::new(if switches & 16 != 0 { '`' } else { '\\' })
    };
    let environment = vec![("A".to_string(), "a/b*c".to_string()), ("E".to_string(), String::new())];
    let _ = lexer.process_word(word, &environment);
});
