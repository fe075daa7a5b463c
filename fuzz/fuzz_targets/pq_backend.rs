//! Messages a server sends our clients (`pq_proto::client::parse_backend`,
//! with the fields the client reads from them), and the physical
//! replication messages a primary sends in `CopyData`
//! (`PrimaryMessage::decode`).
//!
//! Input: `[max body length exponent]`, then a byte stream of messages.

#![no_main]

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::backend::Message;
use pq_proto::client::{error_fields, parse_backend};
use pq_proto::replication::PrimaryMessage;

fn read_fields(message: &Message) {
    match message {
        Message::ErrorResponse(body) => {
            let _ = error_fields(body.fields());
        }
        Message::NoticeResponse(body) => {
            let _ = error_fields(body.fields());
        }
        Message::RowDescription(body) => {
            let mut fields = body.fields();
            while let Ok(Some(f)) = fields.next() {
                let _ = (f.name(), f.type_oid(), f.format());
            }
        }
        Message::DataRow(body) => {
            let buf = body.buffer();
            let mut ranges = body.ranges();
            while let Ok(Some(range)) = ranges.next() {
                if let Some(range) = range {
                    // What the client does: a range outside the buffer is an error.
                    let _ = buf.get(range).map(std::str::from_utf8);
                }
            }
        }
        Message::ParameterStatus(body) => {
            let _ = (body.name(), body.value());
        }
        Message::BackendKeyData(body) => {
            let _ = (body.process_id(), body.secret_key());
        }
        Message::CopyData(body) => {
            if let Ok(m) = PrimaryMessage::decode(Bytes::copy_from_slice(body.data())) {
                // Booleans are any non-zero byte on the wire, 1 when written.
                let mut out = BytesMut::new();
                m.encode(&mut out);
                assert_eq!(out.len(), body.data().len());
                assert_eq!(PrimaryMessage::decode(out.freeze()).ok(), Some(m));
            }
        }
        Message::AuthenticationSasl(body) => {
            let mut mechanisms = body.mechanisms();
            while let Ok(Some(_)) = mechanisms.next() {}
        }
        Message::CommandComplete(body) => {
            let _ = body.tag();
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&exponent, stream)) = data.split_first() else {
        return;
    };
    let max_len = 1usize << (exponent % 25);
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match parse_backend(&mut buf, max_len) {
            Ok(Some((_tag, message))) => {
                assert!(buf.len() < before, "a message consumed nothing");
                read_fields(&message);
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
