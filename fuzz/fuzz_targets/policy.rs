//! Policy YAML (or JSON) through the parser and Cilium's validation, then resolution of what
//! was accepted for an endpoint: never a panic; every problem names its file and says what.
#![no_main]

use std::path::Path;

use fqdnd_fuzz::inventory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (policies, problems) = policy_sync::parse_file(Path::new("fuzz.yaml"), text);
    for p in &problems {
        assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
        assert!(p.to_string().contains("fuzz.yaml"), "a problem that does not name its file: {p}");
    }
    let inventory = inventory();
    for endpoint in &inventory {
        let resolved = policy_sync::resolve(&policies, endpoint, &inventory);
        let _ = resolved.dns.decide("10.96.0.10".parse().unwrap(), 53, fqdn_cache::L4Proto::Udp, "www.microsoft.com.");
    }
});
