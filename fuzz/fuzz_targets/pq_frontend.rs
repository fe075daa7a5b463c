//! Messages a client sends our servers after the startup phase
//! (`pq_proto::frontend::parse_message`), and the physical replication
//! messages a standby sends in `CopyData` (`StandbyMessage::decode`).
//!
//! Input: `[max body length exponent]`, then a byte stream of messages,
//! parsed as a server reads them until the stream ends or is refused.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pq_proto::frontend::parse_message;
use pq_proto::replication::StandbyMessage;
use pq_proto::FeMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&exponent, stream)) = data.split_first() else {
        return;
    };
    // Small limits too, so that the limit check is reached.
    let max_len = 1usize << (exponent % 25);
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match parse_message(&mut buf, max_len) {
            Ok(Some(message)) => {
                assert!(buf.len() < before, "a message consumed nothing");
                match message {
                    FeMessage::CopyData(payload) => {
                        assert!(payload.len() <= max_len);
                        if let Ok(m) = StandbyMessage::decode(payload.clone()) {
                            // Booleans are any non-zero byte on the wire, 1 when
                            // written: compare what the bytes mean.
                            let mut out = BytesMut::new();
                            m.encode(&mut out);
                            assert_eq!(out.len(), payload.len());
                            assert_eq!(StandbyMessage::decode(out.freeze()).ok(), Some(m));
                        }
                    }
                    FeMessage::Query(q) | FeMessage::CopyFail(q) => assert!(!q.contains('\0')),
                    _ => {}
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "waiting for more consumed bytes");
                break;
            }
            Err(e) => {
                let _ = (e.to_string(), e.sqlstate());
                break;
            }
        }
    }
});
