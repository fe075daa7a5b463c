//! The proxy's startup handling: the client's startup packet
//! (`pq_proto::parse_startup`), the routing decision from its `options`
//! and the TLS SNI name (`proxy/src/routing.rs`), and the startup packet
//! the proxy forwards to the compute.
//!
//! Input: `[SNI length]`, the SNI name, then the startup packet.

#![no_main]

use bytes::{BufMut, BytesMut};
use fuzz::routing::{route, sni_endpoint, Target};
use libfuzzer_sys::fuzz_target;
use pq_proto::{parse_startup, StartupPacket};

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_target(target: &Target) {
    match target {
        Target::Endpoint(name) | Target::Branch(name) => assert!(valid_name(name), "{name:?}"),
        Target::Default => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sni_len, rest)) = data.split_first() else {
        return;
    };
    let sni_len = usize::from(sni_len).min(rest.len());
    let (sni, packet) = rest.split_at(sni_len);
    let sni = std::str::from_utf8(sni).ok();

    if let Some(name) = sni {
        if let Some(endpoint) = sni_endpoint(name) {
            assert!(valid_name(&endpoint));
            assert!(name.starts_with(&format!("{endpoint}.")), "{name:?}");
        }
    }

    // The options alone, as text, and as the startup packet carries them.
    if let Ok(options) = std::str::from_utf8(packet) {
        if let Ok(routed) = route(Some(options), sni) {
            check_target(&routed.target);
        }
    }
    let mut buf = BytesMut::from(packet);
    let Ok(Some(StartupPacket::Startup { params, .. })) = parse_startup(&mut buf) else {
        return;
    };
    let original_len = packet.len() - buf.len();
    let Ok(routed) = route(params.get("options"), sni) else {
        return;
    };
    check_target(&routed.target);
    if let Some(kept) = &routed.options {
        // What is passed on names no target, and routing it again keeps it.
        let again = route(Some(kept), None).expect("kept options route again");
        assert_eq!(again.target, Target::Default, "{kept:?}");
        assert_eq!(again.options.as_deref(), Some(kept.as_str()));
    }
    // The packet forwarded to the compute: the same parameters, with the
    // routing words taken out of `options`.
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(3 << 16);
    let forwarded: Vec<(&str, &str)> = params
        .iter()
        .filter_map(|(k, v)| {
            if k == "options" {
                routed.options.as_deref().map(|o| (k, o))
            } else {
                Some((k, v))
            }
        })
        .collect();
    for (k, v) in &forwarded {
        out.put_slice(k.as_bytes());
        out.put_u8(0);
        out.put_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    assert!(out.len() <= original_len, "the forwarded packet grew");
    match parse_startup(&mut out) {
        Ok(Some(StartupPacket::Startup { params: p, .. })) => {
            assert_eq!(p.iter().collect::<Vec<_>>(), forwarded);
        }
        other => panic!("the forwarded startup packet parses as {other:?}"),
    }
});
