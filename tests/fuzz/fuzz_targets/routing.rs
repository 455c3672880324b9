//! Route matching: any set of route prefixes and hosts, any request host and path;
//! resolve never panics and a match is always a route whose prefix covers the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::config::HostMatch;
use modelgate::routing::RouteTable;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines: routes as "host path" (host "-" for none), the last line is "host path".
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(request) = lines.pop() else {
        return;
    };
    let mut table = RouteTable::default();
    let mut prefixes = Vec::new();
    for line in lines.iter().take(64) {
        let (host, path) = line.split_once(' ').unwrap_or(("-", line));
        if !path.starts_with('/') {
            continue;
        }
        let host = match host {
            "-" => None,
            h if h.starts_with("*.") => Some(HostMatch::Wildcard(h[1..].to_ascii_lowercase())),
            h => Some(HostMatch::Exact(h.to_ascii_lowercase())),
        };
        table.insert(host.as_ref(), path, path.to_string());
        prefixes.push(path.to_string());
    }
    let (host, path) = request.split_once(' ').unwrap_or(("", request));
    if let Some(prefix) = table.resolve(host, path) {
        assert!(prefixes.contains(prefix));
        let rest = modelgate::routing::strip_prefix(path, prefix);
        assert!(rest.starts_with('/') || rest.is_empty(), "{path:?} - {prefix:?} = {rest:?}");
    }
    // Request heads with any bytes: the host used for routing never panics.
    if let Ok(mut head) = pingora_http::RequestHeader::build("GET", b"/", None) {
        if head.insert_header("host", host).is_ok() {
            let _ = modelgate::routing::request_host(&head);
        }
    }
});
