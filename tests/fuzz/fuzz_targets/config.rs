//! Config parsing and validation: any text gives a config or errors, never a panic,
//! and every error names a line inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz/modelgate.toml");
    match modelgate::config::parse(text, path) {
        Ok(loaded) => {
            // A valid config renders its summary too.
            let _ = modelgate::config::summary(&loaded.config);
        }
        Err(errors) => {
            let lines = text.lines().count() + 1;
            for e in &errors.0 {
                assert!(e.line <= lines, "error line {} beyond the file ({lines})", e.line);
            }
        }
    }
});
