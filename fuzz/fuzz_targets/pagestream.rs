//! The pagestream protocol (`pageserver_api::pagestream`): requests the
//! pageserver decodes from computes, responses computes decode, and the
//! relation sizes of a lazy base backup (`pageserver_api::lazy`).
//!
//! Input: `[kind]` (0 request, 1 response, 2 relation sizes), then the bytes.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pageserver_api::lazy;
use pageserver_api::pagestream::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Ok(request) = Request::decode(body) {
                assert_eq!(&request.encode()[..], body, "re-encoding differs");
            }
        }
        1 => {
            let bytes = Bytes::copy_from_slice(body);
            if let Ok(response) = Response::decode(&bytes) {
                let encoded = response.encode();
                match response {
                    // A boolean is any non-zero byte on the wire; an error
                    // message is read lossily as UTF-8.
                    Response::Exists(_) | Response::Error(_) => {
                        assert_eq!(Response::decode(&encoded), Ok(response));
                    }
                    _ => assert_eq!(encoded, bytes, "re-encoding differs"),
                }
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            if let Ok(sizes) = lazy::parse(text) {
                let formatted = lazy::format(&sizes);
                assert_eq!(lazy::parse(&formatted), Ok(sizes));
            }
        }
    }
});
