//! Arbitrary text through the manifest source's parser and converter (`load_manifest`: YAML and
//! JSON documents, `kind: List`, every kind switchboard reads, validation into the model). It
//! must return objects or an error with a position, never panic. Run with
//! `cargo +nightly fuzz run manifest` from `controller/` (see controller/fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for name in ["fuzz.yaml", "fuzz.json"] {
        if let Err(e) = controller::parse::load_manifest(std::path::Path::new(name), text) {
            // Every error names the file.
            assert!(e.to_string().contains(name), "{e}");
        }
    }
});
