//! Names as the ledger and the logs show them: the rendering of any byte string is
//! printable and parses back to the same bytes; a fitted name is within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perpetual::engine::names;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

fuzz_target!(|data: &[u8]| {
    let name = OsStr::from_bytes(data);
    let text = names::render(name);
    assert!(!text.chars().any(char::is_control));
    assert_eq!(names::parse(&text).as_bytes(), data);
    for n in [0, 1, 1000] {
        let fitted = names::numbered(name, n, 248);
        assert!(fitted.len() <= 248, "{} bytes", fitted.len());
    }
});
