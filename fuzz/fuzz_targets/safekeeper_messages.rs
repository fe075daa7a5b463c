//! The safekeeper protocol's messages (`safekeeper_api::messages`): what a
//! safekeeper decodes from proposers and a walproposer from safekeepers.
//! Whatever decodes must encode back to the same bytes.
//!
//! Input: `[direction]` (bit 0: acceptor message), then the message.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use safekeeper_api::messages::{AcceptorMessage, ProposerMessage};

fuzz_target!(|data: &[u8]| {
    let Some((&direction, message)) = data.split_first() else {
        return;
    };
    if direction & 1 == 0 {
        let bytes = Bytes::copy_from_slice(message);
        if let Ok(m) = ProposerMessage::decode(&bytes) {
            if let ProposerMessage::Append(a) = &m {
                assert_eq!(
                    a.end_lsn.checked_sub(a.begin_lsn),
                    Some(a.wal_data.len() as u64)
                );
            }
            if let ProposerMessage::Elected(e) = &m {
                let _ = e.term_history.validate();
                let _ = e.term_history.highest_common_point(
                    e.start_streaming_at,
                    &e.term_history,
                    e.timeline_start_lsn,
                );
            }
            assert_eq!(m.encode(), bytes, "re-encoding differs");
        }
    } else if let Ok(m) = AcceptorMessage::decode(message) {
        let encoded = m.encode();
        // `vote_given` is any non-zero byte on the wire, 1 when written.
        if let AcceptorMessage::Vote(v) = &m {
            assert_eq!(encoded.len(), message.len());
            assert_eq!(encoded[9] != 0, v.vote_given);
            assert_eq!(AcceptorMessage::decode(&encoded).as_ref(), Ok(&m));
        } else {
            assert_eq!(&encoded[..], message, "re-encoding differs");
        }
    }
});
