//! `wsgate::config::load_str` on arbitrary text (bytes that are not UTF-8 are converted lossily,
//! as an editor would show them). Invariants: never panics; an error is displayed as one line
//! (`fuzz.yaml:LINE:COLUMN: key: message`, no line break anywhere, so logs stay one line per
//! event) and its line and column are 1-based and inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wsgate_fuzz::yaml_line_count;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
});

fn check(text: &str) {
    let Err(e) = wsgate::config::load_str(text, "fuzz.yaml", Path::new("/nonexistent")) else {
        return;
    };
    let shown = e.to_string();
    assert!(
        !shown.contains(['\n', '\r', '\u{0b}', '\u{0c}', '\u{85}', '\u{2028}', '\u{2029}']),
        "error display is not one line: {shown:?}"
    );
    assert!(
        shown.starts_with(&format!("fuzz.yaml:{}:{}: ", e.line, e.column)),
        "error display does not start with file:line:column: {shown:?}"
    );
    assert!(
        e.line >= 1 && e.column >= 1,
        "position not 1-based: {shown:?}"
    );
    let lines = yaml_line_count(text);
    assert!(
        e.line <= lines + 1,
        "line {} beyond the text's {lines} lines: {shown:?}",
        e.line
    );
}
